import { expect } from 'chai';
import { GitClient, eventually, http, printLogsOnFailure, type TestNode } from '../support/cluster.js';
import { expectNoLeftovers, expectRepoPresenceAgrees } from '../support/fault-checks.js';
import { PartitionedCluster } from '../support/partition.js';
import { cloneLocal, commitFile, createRepo, diskRefs, expectConverged, expectPushed } from '../support/push-helpers.js';

// A 3-node cluster split in two: node-3 alone (the minority) and node-1, node-2 (the majority). Links
// are cut in both directions by relays in front of every node (spec/support/partition.ts); clients
// still reach every node directly. The minority can neither commit nor serve a read as current, the
// majority goes on committing, and after healing everything converges with nothing acknowledged lost.

describe('partitions (3-node cluster behind relays)', function () {
  let pc: PartitionedCluster;
  let git: GitClient;
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;

  before(async function () {
    this.timeout(60_000);
    [pc, git] = await Promise.all([PartitionedCluster.create(3, { PREPARE_TIMEOUT_MS: '2000', COMMIT_TIMEOUT_MS: '2000' }), GitClient.create()]);
    [n1, n2, n3] = pc.cluster.nodes as [TestNode, TestNode, TestNode];
  });
  afterEach(function () {
    printLogsOnFailure(this, pc?.cluster);
  });
  after(async function () {
    await Promise.all([pc?.destroy(), git?.dispose()]);
  });

  /** Waits until every node sees exactly `reachable` of its peers (the heartbeat has noticed a cut or a heal). */
  async function waitForPeers(expected: Map<TestNode, number>): Promise<void> {
    await eventually(async () => {
      for (const [node, reachable] of expected) {
        const res = await node.health();
        expect(res.body?.peers_reachable, `${node.serverId} reachable peers`).to.equal(reachable);
      }
    }, 15_000, 100);
  }

  it('a node cut off from both peers commits nothing and serves no read as current; the majority commits; after healing all converge', async function () {
    this.timeout(90_000);
    const cluster = pc.cluster;
    const repoId = 'part/split';
    const minorityCreate = 'part/from-minority';
    const majorityCreate = 'part/from-majority';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'part');
    const c1 = await commitFile(git, work, 'a.txt', 'before the split\n');
    await eventually(async () => expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work })), 15_000, 200);
    await expectConverged(cluster, git, repoId);

    pc.isolate(n3);
    await waitForPeers(new Map([[n1, 1], [n2, 1], [n3, 0]]));

    // The minority cannot commit a push: a clear rejection, and no node moves.
    const c2 = await commitFile(git, work, 'a.txt', 'pushed into the minority\n');
    const rejected = await git.run(['push', n3.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work, timeoutMs: 60_000 });
    expect(rejected.code, `push through the minority was accepted:\n${rejected.stderr}`).to.not.equal(0);
    expect(rejected.stderr, 'the client is told why').to.match(/quorum|reachable|unavailable|503/i);
    for (const node of cluster.nodes) expect((await diskRefs(git, node, repoId))['refs/heads/main'], `main on ${node.serverId}`).to.equal(c1);

    // Nor a create: 503, and the repo exists nowhere.
    const created = await n3.createRepo(minorityCreate);
    expect(created.status, created.text).to.equal(503);
    expect(created.body?.error?.code, created.text).to.be.a('string');
    expect(await expectRepoPresenceAgrees(cluster.nodes, minorityCreate, 5000)).to.equal(false);

    // Nor a read as current: its copy may be stale, so info/refs answers 503 rather than old refs.
    const refs = await http(`${n3.url}/${repoId}.git/info/refs?service=git-upload-pack`);
    expect(refs.status, refs.text).to.equal(503);
    expect(refs.body?.error?.code, refs.text).to.equal('read_quorum_unreachable');
    const lsRemote = await git.run(['ls-remote', n3.gitUrl(repoId)], { timeoutMs: 30_000 });
    expect(lsRemote.code, `ls-remote through the minority answered:\n${lsRemote.stdout}`).to.not.equal(0);
    expect(lsRemote.stdout, 'no refs served').to.equal('');

    // The majority goes on committing: a push over c1 and a create.
    await git.ok(['reset', '--quiet', '--hard', c1], { cwd: work });
    const c3 = await commitFile(git, work, 'b.txt', 'pushed into the majority\n');
    const pushed = expectPushed(await git.run(['push', n2.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work, timeoutMs: 60_000 }));
    expect(pushed.confirmed, 'confirmed by the two majority nodes').to.equal(2);
    const majority = await n1.createRepo(majorityCreate);
    expect(majority.status, majority.text).to.be.oneOf([201, 202]);
    // The minority did not get it meanwhile.
    expect((await diskRefs(git, n3, repoId))['refs/heads/main'], 'main on the cut-off node').to.equal(c1);

    // Healed: the minority catches up, nothing acknowledged is lost, nothing of the minority's writes lands.
    pc.healLinks();
    await waitForPeers(new Map([[n1, 2], [n2, 2], [n3, 2]]));
    const state = await expectConverged(cluster, git, repoId, 30_000);
    expect(state.refs['refs/heads/main'], `main everywhere (c2 ${c2} was refused)`).to.equal(c3);
    expect(await expectRepoPresenceAgrees(cluster.nodes, majorityCreate, 30_000)).to.equal(true);
    expect(await expectRepoPresenceAgrees(cluster.nodes, minorityCreate, 5000)).to.equal(false);
    for (const id of [repoId, majorityCreate, minorityCreate]) await expectNoLeftovers(cluster.nodes, id);
    // And the healed minority serves the current refs again.
    const served = await eventually(async () => {
      const res = await git.run(['ls-remote', n3.gitUrl(repoId), 'refs/heads/main'], { timeoutMs: 30_000 });
      expect(res.code, res.stderr).to.equal(0);
      return res.stdout;
    }, 15_000, 200);
    expect(served.split(/\s/)[0]).to.equal(c3);
  });
});
