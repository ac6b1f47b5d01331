import { expect } from 'chai';
import { Cluster, GitClient, eventually, type TestNode, withCluster } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, diskRefs, expectConverged, expectPushed, expectFsckClean, repoVersion } from '../support/push-helpers.js';

// Divergence at equal versions (which the protocol never produces, but a disk edit or a bug could):
// anti-entropy compares refs digests among replicas at the same generation; the replica in the
// minority repairs itself from the majority and keeps what only it had under refs/lost+found/,
// hidden from clients.

describe('divergence repair (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n3: TestNode;

  withCluster(3, {}, (c, g) => {
    [cluster, git] = [c, g];
    [n1, , n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  it('finds a replica whose refs differ at the same generation and repairs it from the majority, keeping its refs aside', async function () {
    const repoId = 'repair/diverged';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'repair');
    const good = await commitFile(git, work, 'a.txt', 'agreed\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    const agreed = await expectConverged(cluster, git, repoId);

    // Behind the protocol's back, node 3's main moves to a commit only it has, and a branch appears.
    const dir = n3.repoDir(repoId);
    const tree = (await git.run(['--git-dir', dir, 'rev-parse', `${good}^{tree}`])).stdout.trim();
    const rogue = (await git.run(['--git-dir', dir, 'commit-tree', tree, '-p', good, '-m', 'rogue'])).stdout.trim();
    expect(rogue).to.match(/^[0-9a-f]{40}$/);
    expect((await git.run(['--git-dir', dir, 'update-ref', 'refs/heads/main', rogue])).code).to.equal(0);
    expect((await git.run(['--git-dir', dir, 'update-ref', 'refs/heads/extra', rogue])).code).to.equal(0);
    expect((await repoVersion(n3, repoId)).generation).to.equal(agreed.generation);

    const served = async (): Promise<Record<string, string>> =>
      Object.fromEntries(Object.entries(await diskRefs(git, n3, repoId)).filter(([ref]) => !ref.startsWith('refs/lost+found/')));
    // The refs are right a moment before the repair is logged as done: wait for both.
    await eventually(async () => {
      expect(n3.logText()).to.match(/"message":"repaired"/);
      expect(await served()).to.deep.equal({ 'refs/heads/main': good });
    }, 30_000);
    expect(n3.logText()).to.match(/replicas diverged at the same version/);
    // What only node 3 had is kept, under refs/lost+found/, and never shown to clients.
    const kept = (await git.run(['--git-dir', dir, 'for-each-ref', '--format=%(objectname) %(refname)', 'refs/lost+found/'])).stdout;
    expect(kept).to.include(rogue);
    expect(kept).to.match(/refs\/lost\+found\/.*\/heads\/main\n/);
    const advertised = (await git.run(['ls-remote', n3.gitUrl(repoId)])).stdout;
    expect(advertised).to.not.include('lost+found');
    expect(advertised).to.not.include(rogue);
    for (const node of cluster.nodes) {
      expect((await repoVersion(node, repoId)).generation).to.equal(agreed.generation);
      await expectFsckClean(git, node, repoId);
      // A minority replica repaired at the first attempt was never one that does not converge.
      expect((await node.health()).body.replicas_not_converging, node.serverId).to.deep.equal([]);
    }
    expect(n3.logText()).to.not.match(/"message":"replica is not converging"/);
  });
});
