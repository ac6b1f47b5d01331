import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { expect } from 'chai';
import { LONG_2PC_ENV, Cluster, GitClient, eventually, http, listTree, type TestNode, withCluster } from '../support/cluster.js';
import { UPDATE_REF_SESSION_COMMAND } from '../../lib/git/git-refs.js';

// Git's smart HTTP on a 3-node cluster, driven by the real git client: clone and push, unknown repos,
// clients that go away mid-transfer, refs outside heads/tags and pushes with thousands of refs.
// Every push here goes to node 1 and is read back from node 1.

/** Command lines of the git processes serving `service` requests (not ref advertisements) on any node. */
function serving(nodes: TestNode[], service: string): string[] {
  return nodes
    .flatMap((n) => n.processes())
    .map((p) => p.command)
    .filter((c) => c.includes(service) && !c.includes('--advertise-refs'));
}

/**
 * The git processes of a node that serve clients: everything but its own housekeeping, which outlives
 * requests on purpose (idle `update-ref --stdin` sessions kept for the next push, background gc).
 */
function clientGit(node: TestNode): string[] {
  return node
    .processes()
    .map((p) => p.command)
    .filter((c) => !UPDATE_REF_SESSION_COMMAND.test(c) && !/^git -c gc\.autoDetach=false gc --auto/.test(c));
}

/**
 * A TCP relay in front of a node that passes at most `limit` bytes each way per connection and then
 * stops reading, so a transfer through it is stuck mid-way for as long as a spec needs (the client
 * waits for bytes, git on the node for its pipe to drain). Whichever side closes, the other is closed.
 */
async function stallingRelay(target: URL, limit: number): Promise<{ url: (u: string) => string; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    const relay = (from: net.Socket, to: net.Socket): void => {
      let passed = 0;
      from.on('data', (chunk: Buffer) => {
        const room = limit - passed;
        if (room > 0) to.write(chunk.subarray(0, room));
        passed += chunk.length;
        if (passed >= limit) from.pause();
      });
      from.on('close', () => to.destroy());
    };
    relay(client, upstream);
    relay(upstream, client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: (u) => u.replace(target.host, `127.0.0.1:${port}`),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** How often the nodes logged that a client went away and they stopped git. */
function clientsGone(nodes: TestNode[]): number {
  return nodes.reduce((sum, n) => sum + n.logText().split('client went away').length - 1, 0);
}

describe('git smart HTTP (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;

  // Nodes stay up here, so long protocol timeouts cost nothing; they keep a 16 MiB push or a
  // 3,000-ref push on a loaded 2-core machine from being aborted for slowness.
  withCluster(3, { env: { ...LONG_2PC_ENV } }, (c, g) => {
    [cluster, git] = [c, g];
  });

  describe('a new repository', function () {
    const repoId = 'alice/project';
    let pushed: { dir: string; oid: string };

    before(async function () {
      const created = await cluster.node(1).createRepo(repoId);
      expect(created.status, created.text).to.equal(201);
      // The 201 waits for a quorum, so the node outside it may apply the create a moment later: wait
      // until it lists the repo before cloning from it.
      for (const node of cluster.nodes) {
        if (!created.body.nodes_confirmed.includes(node.url)) await eventually(async () => expect((await node.getRepo(repoId)).status).to.equal(200));
      }
    });

    it('clones empty from node 2 and from node 3', async function () {
      for (const node of [cluster.node(2), cluster.node(3)]) {
        const dir = path.join(await git.tempDir('empty'), 'clone');
        const result = await git.run(['clone', node.gitUrl(repoId), dir]);
        expect(result.code, result.stderr).to.equal(0);
        expect(result.stderr).to.match(/cloned an empty repository/);
        expect(await git.ok(['rev-parse', '--is-inside-work-tree'], { cwd: dir })).to.equal('true\n');
      }
    });

    it('accepts a push to node 1, then a clone from node 1 has the commit', async function () {
      pushed = await git.commitRepo('pushed', { 'README.md': '# project\n', 'main.c': 'int main(void) { return 0; }\n' });
      const push = await git.run(['push', cluster.node(1).gitUrl(repoId), 'main:refs/heads/main'], { cwd: pushed.dir });
      expect(push.code, push.stderr).to.equal(0);

      const dir = path.join(await git.tempDir('full'), 'clone');
      const clone = await git.run(['clone', cluster.node(1).gitUrl(repoId), dir]);
      expect(clone.code, clone.stderr).to.equal(0);
      expect((await git.ok(['rev-parse', 'HEAD'], { cwd: dir })).trim()).to.equal(pushed.oid);
      expect(await fs.readFile(path.join(dir, 'main.c'), 'utf8')).to.equal('int main(void) { return 0; }\n');
    });

    for (const suffix of ['.git', '']) {
      it(`lists the pushed ref with git ls-remote, URL ${suffix === '' ? 'without' : 'with'} the .git suffix`, async function () {
        const out = await git.ok(['ls-remote', cluster.node(1).gitUrl(repoId, suffix)]);
        expect(out).to.equal(`${pushed.oid}\tHEAD\n${pushed.oid}\trefs/heads/main\n`);
      });

      it(`clones the commit ${suffix === '' ? 'without' : 'with'} the .git suffix`, async function () {
        const dir = path.join(await git.tempDir('suffix'), 'clone');
        await git.ok(['clone', '--quiet', cluster.node(1).gitUrl(repoId, suffix), dir]);
        expect((await git.ok(['rev-parse', 'HEAD'], { cwd: dir })).trim()).to.equal(pushed.oid);
      });
    }
  });

  describe('an unknown repository', function () {
    const unknownRows: { method: string; path: string }[] = ['ghost/none.git', 'ghost/none'].flatMap((base) => [
      { method: 'GET', path: `/${base}/info/refs?service=git-upload-pack` },
      { method: 'GET', path: `/${base}/info/refs?service=git-receive-pack` },
      { method: 'POST', path: `/${base}/git-upload-pack` },
      { method: 'POST', path: `/${base}/git-receive-pack` },
    ]);
    unknownRows.push(
      { method: 'GET', path: '/a/b/c/deep.git/info/refs?service=git-upload-pack' },
      { method: 'GET', path: '/-x/y.git/info/refs?service=git-upload-pack' },
      { method: 'POST', path: '/alice/.hidden/git-receive-pack' },
    );

    for (const row of unknownRows) {
      it(`answers ${row.method} ${row.path} with 404 and creates nothing`, async function () {
        const node = cluster.node(2);
        const before = await listTree(node.reposDir);
        const res = await http(`${node.url}${row.path}`, {
          method: row.method,
          ...(row.method === 'POST' ? { body: '0000', headers: { 'content-type': `application/x-${row.path.split('/').pop()}-request` } } : {}),
        });
        expect(res.status, res.text).to.equal(404);
        expect(res.body.error.code).to.be.oneOf(['repo_not_found', 'not_found']);
        expect(await listTree(node.reposDir)).to.deep.equal(before);
      });
    }

    it('makes git clone fail and leaves nothing on disk', async function () {
      const node = cluster.node(3);
      const before = await listTree(node.reposDir);
      const dir = path.join(await git.tempDir('ghost'), 'clone');
      const result = await git.run(['clone', node.gitUrl('ghost/clone'), dir]);
      expect(result.code).to.not.equal(0);
      expect(result.stderr).to.match(/not found|404/);
      expect(await listTree(node.reposDir)).to.deep.equal(before);
      expect((await node.getRepo('ghost/clone')).status).to.equal(404);
    });

    it('makes git push fail and leaves nothing on disk', async function () {
      const node = cluster.node(1);
      const before = await listTree(node.reposDir);
      const local = await git.commitRepo('ghost-push');
      const result = await git.run(['push', node.gitUrl('ghost/push'), 'main'], { cwd: local.dir });
      expect(result.code).to.not.equal(0);
      expect(await listTree(node.reposDir)).to.deep.equal(before);
    });
  });

  describe('a client that goes away mid-transfer', function () {
    // The client reaches node 1 through a relay that passes 1 MiB each way and then stops reading, so
    // the transfer is stuck mid-way whatever the machine's speed: git on the node is blocked writing
    // (a clone) or reading (a push) when the client dies. (Without it a fast clone once took in all
    // of a 32 MiB pack before it could be stopped, and on a loaded machine a 64 MiB one did: git on
    // the node had finished while the client was still indexing.) 16 MiB of random bytes cannot be
    // compressed and is more than the socket buffers between the node and the relay hold.
    const repoId = 'alice/large';
    const RELAYED_BYTES = 1024 * 1024;
    let large: { dir: string; oid: string };

    before(async function () {
      expect((await cluster.node(1).createRepo(repoId)).status).to.equal(201);
      large = await git.commitRepo('large', { 'blob.bin': randomBytes(16 * 1024 * 1024) });
      await git.ok(['push', '--quiet', cluster.node(1).gitUrl(repoId), 'main'], { cwd: large.dir });
    });

    /**
     * Runs a git client against node 1 through the stalling relay until a node is serving it, freezes
     * the client, then kills its whole process group (git and git-remote-http) like a laptop lid
     * closing. Every node must stay up and leave no git process behind. (A push may be served by
     * another node than the one in the URL: pushes are routed to the repo's coordinator.)
     */
    async function abortMidway(args: (url: string) => string[], service: string, cwd?: string): Promise<void> {
      const nodes = cluster.nodes;
      const goneBefore = clientsGone(nodes);
      const relay = await stallingRelay(new URL(cluster.node(1).url), RELAYED_BYTES);
      const client = git.spawnDetached(args(relay.url(cluster.node(1).gitUrl(repoId))), cwd);
      let clientExit: string | undefined;
      const exited = new Promise<void>((resolve) =>
        client.once('exit', (code, signal) => {
          clientExit = String(signal ?? code);
          resolve();
        }),
      );
      const group = (signal: NodeJS.Signals): void => {
        try {
          process.kill(-client.pid!, signal);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
        }
      };
      try {
        await eventually(
          () => {
            expect(clientExit, 'the client finished before it could be stopped').to.equal(undefined);
            expect(serving(nodes, service)).not.to.deep.equal([]);
          },
          30_000,
          10,
        );
        group('SIGSTOP');
        expect(clientExit, 'the client finished before it could be stopped').to.equal(undefined);
      } finally {
        group('SIGKILL');
        await exited;
        await relay.close();
      }
      for (const node of nodes) {
        await eventually(() => expect(clientGit(node), node.serverId).to.deep.equal([]), 15_000);
        expect(node.running, node.serverId).to.equal(true);
        expect((await node.health()).status, node.serverId).to.equal(200);
      }
      // A node noticed the disconnect itself (rather than git finishing on its own).
      // (Its log line may reach the file a moment after git is gone.)
      await eventually(() => expect(clientsGone(nodes)).to.be.greaterThan(goneBefore), 5_000);
    }

    it('does not crash the node and leaves no git process behind when a clone is killed mid-way', async function () {
      const dir = path.join(await git.tempDir('aborted'), 'clone');
      // Protocol v0: its one upload-pack POST is the transfer. Under v2 a short ls-refs POST comes
      // first, and the client could be stopped while that one, not the transfer, was being served.
      await abortMidway((url) => ['-c', 'protocol.version=0', 'clone', url, dir], 'upload-pack');
      // The node still serves the repo whole.
      const again = path.join(await git.tempDir('after-abort'), 'clone');
      await git.ok(['clone', '--quiet', '--no-checkout', cluster.node(1).gitUrl(repoId), again]);
      expect((await git.ok(['rev-parse', 'HEAD'], { cwd: again })).trim()).to.equal(large.oid);
    });

    it('does not crash the node and leaves no git process behind when a push is killed mid-way', async function () {
      const local = await git.tempDir('push-abort');
      await git.ok(['clone', '--quiet', '--no-checkout', large.dir, local]);
      await fs.writeFile(path.join(local, 'blob2.bin'), randomBytes(16 * 1024 * 1024));
      await git.ok(['add', 'blob2.bin'], { cwd: local });
      await git.ok(['commit', '--quiet', '-m', 'second large blob'], { cwd: local });
      const second = (await git.ok(['rev-parse', 'HEAD'], { cwd: local })).trim();
      // A post buffer larger than the pack: one POST, no probe request that could be mistaken for the push.
      await abortMidway((url) => ['-c', 'http.postBuffer=134217728', 'push', url, 'HEAD:refs/heads/main'], 'receive-pack', local);
      // Whatever reached the node before the client died, the repo is whole: main is the old or the new commit.
      const main = (await git.ok(['ls-remote', cluster.node(1).gitUrl(repoId), 'refs/heads/main'])).split('\t')[0];
      expect(main).to.be.oneOf([large.oid, second]);
      await git.ok(['--git-dir', cluster.node(1).repoDir(repoId), 'fsck', '--no-progress', '--connectivity-only']);
    });
  });

  describe('unusual pushes', function () {
    it('pushes refs/notes/commits without hanging', async function () {
      const repoId = 'alice/notes';
      expect((await cluster.node(1).createRepo(repoId)).status).to.equal(201);
      const local = await git.commitRepo('notes');
      await git.ok(['notes', 'add', '-m', 'reviewed', 'HEAD'], { cwd: local.dir });
      const push = await git.run(['push', cluster.node(1).gitUrl(repoId), 'main', 'refs/notes/commits'], { cwd: local.dir, timeoutMs: 20_000 });
      expect(push.code, push.stderr).to.equal(0);
      const refs = await git.ok(['ls-remote', cluster.node(1).gitUrl(repoId)]);
      expect(refs).to.match(/\trefs\/notes\/commits\n/);
      expect(refs).to.include(`${local.oid}\trefs/heads/main\n`);
    });

    // 800 refs: a request head of several chunks (node-git-server's parser once saw 642 of 3,000).
    it('pushes 800 branches at once and ls-remote lists every one', async function () {
      const repoId = 'alice/many-refs';
      expect((await cluster.node(1).createRepo(repoId)).status).to.equal(201);
      const local = await git.commitRepo('many-refs');
      const names = Array.from({ length: 800 }, (_, i) => `refs/heads/release-${i + 1}`);
      await git.ok(['update-ref', '--stdin'], { cwd: local.dir, input: names.map((n) => `create ${n} ${local.oid}\n`).join('') });
      const push = await git.run(['push', '--quiet', cluster.node(1).gitUrl(repoId), 'refs/heads/*:refs/heads/*'], { cwd: local.dir });
      expect(push.code, push.stderr).to.equal(0);
      const listed = (await git.ok(['ls-remote', '--heads', cluster.node(1).gitUrl(repoId)]))
        .trim()
        .split('\n')
        .map((line) => line.split('\t'));
      expect(listed).to.have.length(801);
      expect(listed.every(([oid]) => oid === local.oid)).to.equal(true);
      const refs = new Set(listed.map(([, ref]) => ref));
      for (const name of ['refs/heads/main', 'refs/heads/release-1', 'refs/heads/release-400', 'refs/heads/release-800']) {
        expect(refs.has(name), name).to.equal(true);
      }
    });
  });
});
