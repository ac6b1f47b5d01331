import path from 'node:path';
import { expect } from 'chai';
import { Cluster, GitClient, eventually, type TestNode, withCluster } from '../support/cluster.js';
import {
  cloneLocal,
  commitFile,
  createRepo,
  diskRefs,
  expectConverged,
  expectPushed,
  expectReplicasAgree,
  repoCoordinatedBy,
  repoVersion,
  startWith,
  waitForView,
} from '../support/push-helpers.js';

// Reads of replicated repos on a 3-node cluster (quorum 2, read quorum 2): a replica that missed
// pushes is stale, and while it is, the reads it receives are proxied to an up-to-date node; it catches
// up on disk by itself once it can; and a node that cannot reach R nodes refuses to serve (503) rather
// than hand out what may be an old copy. Every spec ends by comparing refs on disk and fsck everywhere.

describe('reads of replicated repos (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;

  /** A repo coordinated by node 1 with one commit on main everywhere, and node 3 stopped after missing two more pushes. */
  async function node3MissesTwoPushes(repoId: string): Promise<{ work: string; base: string; head: string }> {
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'reads');
    const base = await commitFile(git, work, 'a.txt', 'base\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await expectConverged(cluster, git, repoId);
    await n3.stop();
    await waitForView(cluster);
    await commitFile(git, work, 'a.txt', 'second\n');
    expectPushed(await git.run(['push', n2.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    const head = await commitFile(git, work, 'a.txt', 'third\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', 'HEAD:refs/heads/topic'], { cwd: work }));
    expect((await diskRefs(git, n3, repoId))['refs/heads/main']).to.equal(base);
    return { work, base, head };
  }

  withCluster(3, { healAfterEach: true }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, n2, n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  it('proxies every read a stale replica receives to an up-to-date node, then the replica catches up on disk by itself', async function () {
    const repoId = repoCoordinatedBy(cluster, n1, 'stale', 'proxied');
    const { base, head } = await node3MissesTwoPushes(repoId);
    // A catch-up that cannot finish (every fetch is cut off after 1 ms) keeps node 3 stale for as long as we look.
    await startWith(n3, { CATCH_UP_TIMEOUT_MS: '1' });
    await waitForView(cluster);
    const logBefore = n3.logText().length;
    const expected = `${head}\tHEAD\n${head}\trefs/heads/main\n${head}\trefs/heads/topic\n`;
    expect(await git.ok(['ls-remote', n3.gitUrl(repoId)])).to.equal(expected);
    const clone = path.join(await git.tempDir('stale-clone'), 'c');
    await git.ok(['clone', '--quiet', n3.gitUrl(repoId), clone]);
    expect((await git.ok(['rev-parse', 'HEAD'], { cwd: clone })).trim()).to.equal(head);
    const reader = await cloneLocal(git, n3, repoId, 'stale-fetch');
    await git.ok(['fetch', '--quiet', 'origin'], { cwd: reader });
    expect((await git.ok(['rev-parse', 'origin/topic'], { cwd: reader })).trim()).to.equal(head);

    // Node 3 served none of that itself: it is still behind, on disk and by generation, and said where it sent each read.
    expect((await diskRefs(git, n3, repoId))['refs/heads/main']).to.equal(base);
    await eventually(async () => {
      const versions = await Promise.all(cluster.nodes.map((n) => repoVersion(n, repoId)));
      expect(versions.map((v) => v.generation)).to.deep.equal([3, 3, 1]);
    });
    const logged = n3.logText().slice(logBefore);
    expect(logged).to.match(/"message":"proxying"/);
    expect(logged).to.match(/"message":"catch-up failed"/);
    const proxiedTo = [...logged.matchAll(/"message":"proxying".*?"to":"([^"]+)"/g)].map((m) => m[1]);
    expect(proxiedTo.length).to.be.at.least(4);
    for (const to of proxiedTo) expect(to).to.be.oneOf([n1.url, n2.url]);
    // The nodes at the newest generation agree.
    await expectReplicasAgree(cluster, git, repoId);

    // Restarted with working catch-up: its own anti-entropy brings its disk up to date; nobody reads through it.
    await n3.stop();
    await n3.start();
    const agreed = await expectConverged(cluster, git, repoId);
    expect(agreed).to.deep.equal({ refs: { 'refs/heads/main': head, 'refs/heads/topic': head }, head: 'refs/heads/main', generation: 3 });
    expect(await diskRefs(git, n3, repoId)).to.deep.equal(agreed.refs);
  });

  it('refuses reads (HTTP 503) on a node that reaches fewer than R nodes, rather than serve its possibly stale copy', async function () {
    const repoId = repoCoordinatedBy(cluster, n2, 'stale', 'unavailable');
    const { base, head } = await node3MissesTwoPushes(repoId);
    // Node 3 alone: its copy is two pushes behind, and it cannot tell.
    await Promise.all([n1.stop(), n2.stop()]);
    await n3.start();
    expect(await repoVersion(n3, repoId)).to.deep.include({ generation: 1 });
    expect((await diskRefs(git, n3, repoId))['refs/heads/main']).to.equal(base);

    const lsRemote = await git.run(['ls-remote', n3.gitUrl(repoId)]);
    expect(lsRemote.code).to.not.equal(0);
    expect(lsRemote.stdout).to.equal('');
    expect(lsRemote.stderr).to.match(/503/);
    expect(lsRemote.stderr).to.match(/cannot confirm this copy is current: reached 1 of the 2 nodes needed/);
    const clone = await git.run(['clone', n3.gitUrl(repoId), path.join(await git.tempDir('unavailable'), 'c')]);
    expect(clone.code).to.not.equal(0);
    expect(clone.stderr).to.match(/503/);

    // One peer back makes two of three: reads are served again, and they are current.
    await n1.start();
    expect(await git.ok(['ls-remote', n3.gitUrl(repoId), 'refs/heads/main'])).to.equal(`${head}\trefs/heads/main\n`);
    await cluster.heal();
    const agreed = await expectConverged(cluster, git, repoId);
    expect(agreed.refs).to.deep.equal({ 'refs/heads/main': head, 'refs/heads/topic': head });
  });
});
