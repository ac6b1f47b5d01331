import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { LONG_2PC_ENV, Cluster, GitClient, eventually, http, type TestNode, withCluster } from '../support/cluster.js';
import { commitFile, createRepo, expectPushed, startWith, waitForView } from '../support/push-helpers.js';

// Protocol v2 and partial clones on a 3-node cluster, driven by the real git client: the client's
// Git-Protocol header reaches git (v2's ls-refs sends only the refs asked for), filters are allowed
// and the lazy fetches of a partial clone are served, on a node serving its own copy and through a
// stale node that proxies to a current one. An implausible header is served as protocol v0.

/** git with GIT_TRACE_PACKET on: every pkt-line sent (`git>`) and received (`git<`) is on stderr. */
function traced(git: GitClient, args: string[], cwd?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('git', args, { cwd: cwd ?? git.home, env: { ...git.env, GIT_TRACE_PACKET: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The pkt-lines a traced git received (traced as `packet: <process>< <payload>`). */
function received(stderr: string): string[] {
  return [...stderr.matchAll(/packet: +\S*< (.*)$/gm)].map((m) => m[1]!);
}

/** The pkt-lines a traced git sent. */
function sent(stderr: string): string[] {
  return [...stderr.matchAll(/packet: +\S*> (.*)$/gm)].map((m) => m[1]!);
}

/** Objects a repo knows of but does not have (a partial clone's promised objects). */
async function missingObjects(git: GitClient, dir: string): Promise<number> {
  const out = await git.ok(['rev-list', '--objects', '--all', '--missing=print'], { cwd: dir });
  return out.split('\n').filter((l) => l.startsWith('?')).length;
}

describe('protocol v2 and partial clones (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n3: TestNode;
  const repoId = 'proto/demo';
  /** The first and second commits of main; they differ in every file. */
  let first: string;
  let second: string;
  let work: string;

  // As in git-http.spec: long protocol timeouts cost nothing while all nodes are up, and keep a
  // loaded machine's slowness from failing a push.
  withCluster(3, { env: { ...LONG_2PC_ENV } }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, , n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  before(async function () {
    await createRepo(cluster, n1, repoId);
    work = path.join(await git.tempDir('proto'), 'work');
    await git.ok(['init', '--quiet', work]);
    await commitFile(git, work, 'src/a.txt', 'first a\n');
    first = await commitFile(git, work, 'docs/b.txt', 'first b\n');
    await commitFile(git, work, 'src/a.txt', 'second a\n');
    second = await commitFile(git, work, 'docs/b.txt', 'second b\n');
    // Refs a v0 advertisement lists on every fetch, and v2's ls-refs only when asked.
    const branches = Array.from({ length: 20 }, (_, i) => `${first}:refs/heads/feature/f${i}`);
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', `${first}:refs/tags/v1`, ...branches], { cwd: work }));
  });

  it('speaks protocol v2 when the client asks: ls-remote of one prefix and a one-branch fetch get only what they asked for', async function () {
    const url = n1.gitUrl(repoId);
    // git 2.39's ls-remote sends a ref-prefix for --tags and --heads only (patterns are matched by the client).
    const v2 = await traced(git, ['-c', 'protocol.version=2', 'ls-remote', '--tags', url]);
    expect(v2.code, v2.stderr).to.equal(0);
    expect(v2.stdout).to.equal(`${first}\trefs/tags/v1\n`);
    expect(received(v2.stderr)).to.include('version 2');
    expect(sent(v2.stderr)).to.include.members(['command=ls-refs', 'ref-prefix refs/tags/']);
    expect(received(v2.stderr).filter((l) => l.includes('refs/heads/'))).to.deep.equal([]);

    // The same with protocol v0: the server advertises every ref, and the client filters.
    const v0 = await traced(git, ['-c', 'protocol.version=0', 'ls-remote', '--tags', url]);
    expect(v0.code, v0.stderr).to.equal(0);
    expect(v0.stdout).to.equal(v2.stdout);
    expect(received(v0.stderr)).to.not.include('version 2');
    expect(received(v0.stderr).filter((l) => l.includes('refs/heads/feature/'))).to.have.length(20);

    const dir = path.join(await git.tempDir('fetch-v2'), 'f');
    await git.ok(['init', '--quiet', '--bare', dir]);
    const fetched = await traced(git, ['-c', 'protocol.version=2', 'fetch', '--quiet', url, 'refs/heads/main:refs/heads/main'], dir);
    expect(fetched.code, fetched.stderr).to.equal(0);
    expect(sent(fetched.stderr)).to.include('command=fetch');
    expect(received(fetched.stderr)).to.include('version 2');
    expect((await git.ok(['rev-parse', 'refs/heads/main'], { cwd: dir })).trim()).to.equal(second);
  });

  it('answers info/refs as git http-backend does: no service line for v2, and v0 for an implausible Git-Protocol header', async function () {
    const infoRefs = (protocol?: string): ReturnType<typeof http> =>
      http(`${n1.gitUrl(repoId)}/info/refs?service=git-upload-pack`, { headers: protocol === undefined ? {} : { 'git-protocol': protocol } });
    const v2 = await infoRefs('version=2');
    expect(v2.status).to.equal(200);
    expect(v2.headers.get('content-type')).to.equal('application/x-git-upload-pack-advertisement');
    expect(v2.text.startsWith('000eversion 2\n'), v2.text.slice(0, 80)).to.equal(true);
    expect(v2.text).to.include('ls-refs');
    expect(v2.text).to.not.include('refs/heads/main');

    const v0 = await infoRefs();
    expect(v0.text.startsWith('001e# service=git-upload-pack\n0000'), v0.text.slice(0, 80)).to.equal(true);
    expect(v0.text).to.include(`${second} refs/heads/main`);

    // Too long, or characters git never sends: served as if there were no header (v0), never an error.
    for (const bad of [`version=2:${'x'.repeat(300)}`, 'version=2;x', 'version=2 x', 'version=2\u00e9']) {
      const res = await infoRefs(bad);
      expect(res.status, bad).to.equal(200);
      expect(res.text, bad).to.equal(v0.text);
    }
    // A v2 request body with an ignored header is a v0 request: git refuses it, the node goes on.
    const post = await http(`${n1.gitUrl(repoId)}/git-upload-pack`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-git-upload-pack-request', 'git-protocol': 'version=2;x' },
      body: '0014command=ls-refs\n0000',
    });
    expect(post.text).to.not.include('refs/heads/main');
    expect((await n1.health()).status).to.equal(200);
  });

  it('serves blobless and treeless clones, whose later checkouts fetch what they lack', async function () {
    for (const [filter, protocol] of [
      ['blob:none', '2'],
      ['tree:0', '2'],
      ['blob:none', '0'],
    ] as const) {
      const dir = path.join(await git.tempDir(`partial-${filter.replace(':', '-')}-v${protocol}`), 'c');
      const cloned = await git.run(['-c', `protocol.version=${protocol}`, 'clone', '--no-checkout', `--filter=${filter}`, n1.gitUrl(repoId), dir]);
      expect(cloned.code, cloned.stderr).to.equal(0);
      expect(cloned.stderr, `${filter} v${protocol}`).to.not.match(/filtering not recognized/);
      expect(await missingObjects(git, dir), `${filter} v${protocol}`).to.be.greaterThan(0);
      // The checkout fetches the blobs (and for tree:0 the trees) it needs from the node; over v0
      // that takes uploadpack.allowReachableSHA1InWant ("Server does not allow request for
      // unadvertised object" without it).
      await git.ok(['-c', `protocol.version=${protocol}`, 'checkout', '--quiet', first], { cwd: dir });
      expect(await fs.readFile(path.join(dir, 'src/a.txt'), 'utf8')).to.equal('first a\n');
    }
  });

  it('speaks v2 and serves partial clones through a stale node that proxies to a current one', async function () {
    await n3.stop();
    await waitForView(cluster);
    const third = await commitFile(git, work, 'src/a.txt', 'third a\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    // A catch-up that cannot finish keeps node 3 stale: every read it gets is proxied.
    await startWith(n3, { CATCH_UP_TIMEOUT_MS: '1' });
    await waitForView(cluster);
    const logBefore = n3.logText().length;
    const url = n3.gitUrl(repoId);

    const ls = await traced(git, ['-c', 'protocol.version=2', 'ls-remote', '--heads', url, 'main']);
    expect(ls.code, ls.stderr).to.equal(0);
    expect(ls.stdout).to.equal(`${third}\trefs/heads/main\n`);
    expect(received(ls.stderr)).to.include('version 2');
    expect(received(ls.stderr).filter((l) => l.includes('refs/tags/'))).to.deep.equal([]);

    const dir = path.join(await git.tempDir('partial-stale'), 'c');
    const cloned = await traced(git, ['-c', 'protocol.version=2', 'clone', '--no-checkout', '--filter=blob:none', url, dir]);
    expect(cloned.code, cloned.stderr).to.equal(0);
    expect(sent(cloned.stderr)).to.include('command=fetch');
    expect(cloned.stderr).to.not.match(/filtering not recognized/);
    expect(await missingObjects(git, dir)).to.be.greaterThan(0);
    await git.ok(['checkout', '--quiet', 'main'], { cwd: dir });
    expect(await fs.readFile(path.join(dir, 'src/a.txt'), 'utf8')).to.equal('third a\n');

    // Node 3 served none of it: it proxied every request, and is still behind.
    expect(n3.logText().slice(logBefore)).to.match(/"message":"proxying"/);
    const local = await git.ok(['--git-dir', n3.repoDir(repoId), 'rev-parse', 'refs/heads/main']);
    expect(local.trim()).to.equal(second);

    // Restarted with a working catch-up, it fetches from a current node over v2 as well (its gits
    // inherit GIT_TRACE_PACKET from the node).
    await n3.stop();
    const trace = path.join(cluster.root, 'node-3-packets.trace');
    await startWith(n3, { GIT_TRACE_PACKET: trace });
    await eventually(async () => expect((await git.ok(['--git-dir', n3.repoDir(repoId), 'rev-parse', 'refs/heads/main'])).trim()).to.equal(third), 20_000);
    const packets = await fs.readFile(trace, 'utf8');
    expect(sent(packets)).to.include('command=fetch');
    expect(received(packets)).to.include('version 2');
  });
});
