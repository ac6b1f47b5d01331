import { expect } from 'chai';
import { type Cluster, type GitClient, type TestNode, eventually, withCluster } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, diskRefs, expectConverged, expectFsckClean, expectPushed, repoVersion } from '../support/push-helpers.js';

// A lagging replica that holds commits no other node has (a divergent write that never reached a
// quorum) catches up to the majority: every ref outside refs/lost+found/ becomes the majority's, and
// whatever only it had stays on that node under refs/lost+found/, never advertised to clients.

const LOST = 'refs/lost+found/';
const FETCH_NAMESPACE = 'refs/quorum-fetch/';

describe('catch-up keeps what only the lagging replica had (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n3: TestNode;

  withCluster(3, { healAfterEach: true }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, , n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  const outside = (refs: Record<string, string>): Record<string, string> =>
    Object.fromEntries(Object.entries(refs).filter(([ref]) => !ref.startsWith(LOST)));

  it('keeps a moved branch and a branch only it had under refs/lost+found/, and converges on everything else', async function () {
    const repoId = 'lost/catch-up';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'lost-catch-up');
    const base = await commitFile(git, work, 'a.txt', 'agreed\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', 'HEAD:refs/heads/ff'], { cwd: work }));
    await expectConverged(cluster, git, repoId);

    // While node 3 is down, its replica takes a write no quorum saw: main moves to a commit only it
    // has, and a branch only it has points at a child of that commit (so the dropped branch is what
    // keeps the moved one's commit reachable until the very end).
    await n3.stop();
    const dir = n3.repoDir(repoId);
    const tree = (await git.ok(['--git-dir', dir, 'rev-parse', `${base}^{tree}`])).trim();
    const rogue = (await git.ok(['--git-dir', dir, 'commit-tree', tree, '-p', base, '-m', 'rogue'])).trim();
    const rogueChild = (await git.ok(['--git-dir', dir, 'commit-tree', tree, '-p', rogue, '-m', 'rogue child'])).trim();
    await git.ok(['--git-dir', dir, 'update-ref', 'refs/heads/main', rogue, base]);
    await git.ok(['--git-dir', dir, 'update-ref', 'refs/heads/only-here', rogueChild, '']);

    // The majority moves on: main and ff fast-forward to a newer commit.
    const newer = await commitFile(git, work, 'b.txt', 'newer\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', 'HEAD:refs/heads/ff'], { cwd: work }));
    const majority = await repoVersion(n1, repoId);

    await n3.start();
    await eventually(async () => {
      expect((await repoVersion(n3, repoId)).generation).to.equal(majority.generation);
      expect(outside(await diskRefs(git, n3, repoId))).to.deep.equal({ 'refs/heads/main': newer, 'refs/heads/ff': newer });
    }, 30_000);

    // What only node 3 had is kept there; a branch that was only fast-forwarded (ff) lost nothing.
    const onN3 = await diskRefs(git, n3, repoId);
    const kept = Object.entries(onN3).filter(([ref]) => ref.startsWith(LOST));
    expect(kept.map(([ref, oid]) => [ref.replace(/^refs\/lost\+found\/[^/]+\//, ''), oid]).sort()).to.deep.equal([
      ['heads/main', rogue],
      ['heads/only-here', rogueChild],
    ]);
    expect(Object.keys(onN3).filter((ref) => ref.startsWith(FETCH_NAMESPACE))).to.deep.equal([]);

    // Every replica agrees on every ref outside lost+found, and on HEAD.
    for (const node of cluster.nodes) {
      expect(outside(await diskRefs(git, node, repoId)), node.serverId).to.deep.equal({ 'refs/heads/main': newer, 'refs/heads/ff': newer });
      expect((await repoVersion(node, repoId)).generation, node.serverId).to.equal(majority.generation);
      await expectFsckClean(git, node, repoId);
    }

    // Clients never see the kept refs or the private fetch namespace, from any node.
    for (const node of cluster.nodes) {
      const advertised = await git.ok(['ls-remote', node.gitUrl(repoId)]);
      expect(advertised, node.serverId).to.not.include('lost+found');
      expect(advertised, node.serverId).to.not.include('quorum-fetch');
      expect(advertised, node.serverId).to.not.include(rogue);
      expect(advertised, node.serverId).to.not.include(rogueChild);
    }
  });

  it('a later catch-up keeps earlier lost+found refs and never copies them from its source', async function () {
    const repoId = 'lost/twice';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'lost-twice');
    const base = await commitFile(git, work, 'a.txt', 'one\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await expectConverged(cluster, git, repoId);

    // Node 1 holds something under lost+found (from an earlier repair); node 3 catches up from it.
    await git.ok(['--git-dir', n1.repoDir(repoId), 'update-ref', `${LOST}earlier/heads/old`, base]);
    await n3.stop();
    await git.ok(['--git-dir', n3.repoDir(repoId), 'update-ref', `${LOST}mine/heads/kept`, base]);
    const next = await commitFile(git, work, 'b.txt', 'two\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    const majority = await repoVersion(n1, repoId);
    await n3.start();
    await eventually(async () => {
      expect((await repoVersion(n3, repoId)).generation).to.equal(majority.generation);
      expect(outside(await diskRefs(git, n3, repoId))).to.deep.equal({ 'refs/heads/main': next });
    }, 30_000);
    const onN3 = await diskRefs(git, n3, repoId);
    expect(Object.keys(onN3).filter((ref) => ref.startsWith(LOST) || ref.startsWith(FETCH_NAMESPACE))).to.deep.equal([`${LOST}mine/heads/kept`]);
  });
});
