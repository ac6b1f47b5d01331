import { execFile } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { Cluster, GitClient, eventually, type TestNode, withCluster } from '../support/cluster.js';
import { countLooseRefs } from '../../lib/git/git-refs.js';
import { cloneLocal, commitFile, createRepo, diskState, expectFsckClean, expectPushed, repoVersion } from '../support/push-helpers.js';

// Housekeeping: receive-pack runs no gc inside a push; every replica runs `git gc --auto` on a repo
// once it has been quiet for GC_DELAY_MS. Each push leaves one more pack on every replica (peers
// install the shipped pack as is), so without it a peer would collect packs without end. A write
// that leaves many loose refs has them packed on every replica soon after, quiet or not.

describe('background gc on every replica (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;

  // gc --auto repacks (all packs into one) only when a repo holds more packs than gc.autoPackLimit
  // (git's default is 50); with fewer it does nothing. So what it guarantees once a repo is quiet is
  // "at most autoPackLimit packs", and how many are left depends on how the pushes fell against
  // GC_DELAY_MS: with a limit of 4, pushes spaced wider than the delay left 3 packs (a gc after the
  // fifth folded five into one, two more pushes added two), and "at most 1" never came. With a limit
  // of 1 every gc that finds a second pack folds them, so however the pushes fall (all before the
  // first gc, or a gc between each), each replica ends with exactly one pack once quiet: the last
  // write always gets a gc of its own, even when it landed during another (lib/git/maintenance.ts).
  const env = { GC_DELAY_MS: '300', GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'gc.autoPackLimit', GIT_CONFIG_VALUE_0: '1' };
  withCluster(3, { env }, (c, g) => {
    [cluster, git] = [c, g];
    n1 = c.nodes[0]!;
  });

  const packs = async (node: TestNode, repoId: string): Promise<number> =>
    (await fs.readdir(path.join(node.repoDir(repoId), 'objects', 'pack'))).filter((f) => f.endsWith('.pack')).length;

  /**
   * Waits until every replica holds `refs` at one generation and exactly one pack (its gcs are done),
   * then runs fsck on each. Not expectConverged: its fsck would race the gcs, and a repack deleting a
   * pack that fsck has listed fails fsck ("index not opened") though nothing is wrong.
   */
  async function expectSettled(repoId: string, refs: Record<string, string>): Promise<void> {
    await eventually(async () => {
      const generations = await Promise.all(cluster.nodes.map(async (n) => (await repoVersion(n, repoId)).generation));
      expect(new Set(generations).size, `generations ${generations.join(', ')}`).to.equal(1);
      for (const node of cluster.nodes) {
        expect((await diskState(git, node, repoId)).refs, node.serverId).to.deep.equal(refs);
        expect(await packs(node, repoId), `${node.serverId} packs`).to.equal(1);
      }
    }, 30_000);
    for (const node of cluster.nodes) await expectFsckClean(git, node, repoId);
  }

  it('repacks each replica once pushes stop, and the refs and objects stay whole', async function () {
    this.timeout(120_000);
    const repoId = 'gc/many-pushes';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'gc');
    let last = '';
    for (let i = 1; i <= 7; i += 1) {
      last = await commitFile(git, work, 'n.txt', `push ${i}\n`);
      expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    }
    // Seven pushes made seven packs on each replica (receive.unpackLimit=1; peers install the shipped
    // pack); once quiet, the gcs leave exactly one.
    await expectSettled(repoId, { 'refs/heads/main': last });

    // Pushes go on as before after a repack, and are collected in turn.
    const next = await commitFile(git, work, 'n.txt', 'after gc\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await expectSettled(repoId, { 'refs/heads/main': next });
  });
});

// Without the gc (its quiet time is ten minutes here), so only the ref check can have packed them.
describe('packed refs on every replica (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  withCluster(3, { env: { GC_DELAY_MS: '600000' } }, (c, g) => {
    [cluster, git] = [c, g];
    n1 = c.nodes[0]!;
  });

  it('packs the refs of a push of many branches on every replica soon after it lands', async function () {
    this.timeout(120_000);
    const repoId = 'gc/many-refs';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'gc-refs');
    const tip = await commitFile(git, work, 'a.txt', 'a\n');
    const lines = Array.from({ length: 40 }, (_, i) => `create refs/heads/topic/b${String(i).padStart(2, '0')} ${tip}`);
    await git.ok(['update-ref', '--stdin'], { cwd: work, input: `${lines.join('\n')}\n` });
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', 'refs/heads/topic/*:refs/heads/topic/*'], { cwd: work }));
    const expected: Record<string, string> = { 'refs/heads/main': tip };
    for (let i = 0; i < 40; i += 1) expected[`refs/heads/topic/b${String(i).padStart(2, '0')}`] = tip;
    // Every replica holds the 41 refs, none of them a loose file any more (they are in packed-refs),
    // and git reads them all as before.
    await eventually(async () => {
      for (const node of cluster.nodes) {
        expect(await countLooseRefs(node.repoDir(repoId), 100), `${node.serverId} loose refs`).to.equal(0);
        expect((await diskState(git, node, repoId)).refs, node.serverId).to.deep.equal(expected);
      }
    }, 30_000);
    // A push after the packing moves a packed ref as usual (it is a loose file again, until more come).
    const next = await commitFile(git, work, 'a.txt', 'b\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/topic/b07'], { cwd: work }));
    await eventually(async () => {
      for (const node of cluster.nodes) expect((await diskState(git, node, repoId)).refs, node.serverId).to.deep.equal({ ...expected, 'refs/heads/topic/b07': next });
    }, 30_000);
    for (const node of cluster.nodes) await expectFsckClean(git, node, repoId);
  });
});

describe('teardown while housekeeping runs (3-node cluster)', function () {
  // CI once failed in an after-all hook with ENOTEMPTY, removing a repo's refs/heads: the harness had
  // SIGKILLed each node alone, and the `git pack-refs` its housekeeping had started ran on, pruning
  // loose refs in the directory being removed. Here every node's pack-refs is a stand-in that stays
  // (a shell script on the nodes' PATH), so the teardown always finds one running.

  /** Running: /proc has it and it is no zombie (a dead orphan may wait for a reaper that never comes). */
  const running = (pid: number): boolean => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
    } catch {
      return false;
    }
  };

  it('kills every git a node started before it removes the data dirs', async function () {
    this.timeout(120_000);
    const bin = await fs.mkdtemp(path.join(os.tmpdir(), 'quorum-git-stay-git-'));
    const pidFile = path.join(bin, 'pack-refs.pids');
    const realGit = (await promisify(execFile)('sh', ['-c', 'command -v git'])).stdout.trim();
    // `exec`, so the pid written is the one that stays (with the repo as its working directory).
    const script = `#!/bin/sh\nif [ "$1" = pack-refs ]; then echo $$ >> '${pidFile}'; exec sleep 300; fi\nexec '${realGit}' "$@"\n`;
    await fs.writeFile(path.join(bin, 'git'), script, { mode: 0o755 });
    let pids: number[] = [];
    const [cluster, git] = await Promise.all([
      Cluster.create(3, { env: { PATH: `${bin}:${process.env.PATH ?? ''}`, GC_DELAY_MS: '600000' } }),
      GitClient.create(),
    ]);
    try {
      await cluster.heal();
      const n1 = cluster.nodes[0]!;
      const repoId = 'gc/teardown';
      await createRepo(cluster, n1, repoId);
      const work = await cloneLocal(git, n1, repoId, 'gc-teardown');
      const tip = await commitFile(git, work, 'a.txt', 'a\n');
      const lines = Array.from({ length: 40 }, (_, i) => `create refs/heads/topic/b${i} ${tip}`);
      await git.ok(['update-ref', '--stdin'], { cwd: work, input: `${lines.join('\n')}\n` });
      expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', 'refs/heads/topic/*:refs/heads/topic/*'], { cwd: work }));
      // Every replica's housekeeping has started its pack-refs, and each is still running.
      pids = await eventually(async () => {
        const found = (await fs.readFile(pidFile, 'utf8')).trim().split('\n').map(Number);
        expect(found, 'pack-refs started').to.have.length(3);
        return found;
      }, 30_000);
      for (const pid of pids) expect(running(pid), `pack-refs ${pid} before the teardown`).to.equal(true);

      await cluster.destroy();
      for (const pid of pids) expect(running(pid), `pack-refs ${pid} after the teardown`).to.equal(false);
      await fs.access(cluster.root).then(
        () => expect.fail(`${cluster.root} is still there`),
        (err: NodeJS.ErrnoException) => expect(err.code).to.equal('ENOENT'),
      );
    } finally {
      for (const pid of pids) if (running(pid)) process.kill(pid, 'SIGKILL');
      await Promise.all([cluster.destroy(), git.dispose(), fs.rm(bin, { recursive: true, force: true })]);
    }
  });
});
