import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { Cluster, GitClient, eventually, listTree, type TestNode, withCluster } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, expectConverged, expectPushed, repoCoordinatedBy, waitForView } from '../support/push-helpers.js';

// A node killed together with its gits (what a machine crash does) leaves git's lock files in its
// repos, and a node killed alone leaves its gits running as orphans, still holding theirs. Either way
// every later update of a locked ref on that replica failed ("cannot lock ref ... File exists"): its
// prepares voted no and its catch-up failed every round, for good. At start, before any git of its
// own runs, a node kills its leftover gits and removes what they left.

describe('stale git locks after a crash (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n3: TestNode;

  // Nothing here is about timing: prepares get room for a machine loaded by other specs.
  withCluster(3, { healAfterEach: true, env: { PREPARE_TIMEOUT_MS: '3000', COMMIT_TIMEOUT_MS: '3000' } }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, , n3] = c.nodes as [TestNode, TestNode, TestNode];
  });
  let orphan: ChildProcess | undefined;
  afterEach(() => {
    orphan?.kill('SIGKILL');
  });

  it('a restarted node clears the locks its dead gits left, then catches up, and serves and coordinates pushes', async function () {
    this.timeout(120_000);
    // n3 coordinates this repo's pushes once it is back, so its own receive-pack must take the lock too.
    const repoId = repoCoordinatedBy(cluster, n3, 'locks', 'r');
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'locks');
    const c1 = await commitFile(git, work, 'a.txt', 'one\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await expectConverged(cluster, git, repoId);

    await n3.stop();
    // n3 misses this push: it must fetch main on its return.
    const c2 = await commitFile(git, work, 'a.txt', 'two\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));

    // What killed gits leave: the lock files of a ref update and of a HEAD update...
    const replica = n3.repoDir(repoId);
    const planted = ['refs/heads/main.lock', 'HEAD.lock'].map((rel) => path.join(replica, rel));
    await writeFile(planted[0]!, `${c2}\n`);
    await writeFile(planted[1]!, 'ref: refs/heads/other\n');
    // ...and an orphaned git still holding a prepared ref transaction (its node died, it did not).
    orphan = spawn('git', ['--git-dir', replica, 'update-ref', '--stdin'], { env: git.env, stdio: ['pipe', 'pipe', 'ignore'] });
    const held = orphan;
    let said = '';
    const prepared = new Promise<void>((resolve, reject) => {
      held.stdout!.setEncoding('utf8').on('data', (c: string) => {
        said += c;
        if (said.includes('prepare: ok')) resolve();
      });
      held.once('exit', () => reject(new Error(`update-ref exited before preparing: ${said}`)));
    });
    held.stdin!.write(`start\ncreate refs/heads/orphan ${c1}\nprepare\n`);
    await prepared;
    const orphanLock = path.join(replica, 'refs/heads/orphan.lock');
    expect(existsSync(orphanLock)).to.equal(true);

    await n3.start();

    await eventually(() => expect(held.signalCode, 'the orphaned git').to.equal('SIGKILL'), 10_000);
    for (const lock of [...planted, orphanLock]) expect(existsSync(lock), lock).to.equal(false);

    // Catch-up moves main on n3, and a push through n3 (its coordinator) commits everywhere.
    expect((await expectConverged(cluster, git, repoId)).refs).to.deep.equal({ 'refs/heads/main': c2 });
    await waitForView(cluster);
    const c3 = await commitFile(git, work, 'a.txt', 'three\n');
    const report = expectPushed(await git.run(['push', n3.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    expect(report.confirmed).to.be.at.least(2);
    const agreed = await expectConverged(cluster, git, repoId);
    expect(agreed.refs).to.deep.equal({ 'refs/heads/main': c3 });
    expect(agreed.head).to.equal('refs/heads/main');
    for (const node of cluster.nodes) {
      expect((await listTree(node.repoDir(repoId))).filter((f) => f.endsWith('.lock')), node.serverId).to.deep.equal([]);
    }
  });
});
