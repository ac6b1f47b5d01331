import { expect } from 'chai';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { type Cluster, type GitClient, type TestNode, eventually, withCluster } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, diskRefs, expectConverged, expectPushed, repoVersion } from '../support/push-helpers.js';

// A replica whose catch-up fails round after round is reported loudly (an error line once, and
// GET /health `replicas_not_converging`), and reported no more once it converges.

describe('a replica that cannot converge (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n3: TestNode;
  let junkDir: string | undefined;

  withCluster(3, { healAfterEach: true }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, , n3] = c.nodes as [TestNode, TestNode, TestNode];
  });
  after(async function () {
    if (junkDir) await fs.rm(junkDir, { recursive: true, force: true });
  });

  it('is listed in /health and logged once while its catch-up keeps failing, and no longer after it caught up', async function () {
    const repoId = 'stuck/repo';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'stuck');
    await commitFile(git, work, 'a.txt', 'one\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await expectConverged(cluster, git, repoId);

    // While node 3 is down, a file no git wrote appears where refs/heads/topic must go on its
    // replica, and the others take a push creating that branch: every catch-up of node 3 fails.
    await n3.stop();
    junkDir = path.join(n3.repoDir(repoId), 'refs', 'heads', 'topic');
    await fs.mkdir(junkDir, { recursive: true });
    await fs.writeFile(path.join(junkDir, 'junk'), 'not a ref\n');
    const topic = await commitFile(git, work, 'b.txt', 'two\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', 'HEAD:refs/heads/topic'], { cwd: work }));
    const majority = await repoVersion(n1, repoId);
    await n3.start();

    const stuck = await eventually(async () => {
      const res = await n3.health();
      expect(res.status).to.equal(200);
      const list = res.body.replicas_not_converging as { repo_id: string; failures: number; since: string; last_error: string }[];
      expect(list.map((r) => r.repo_id)).to.deep.equal([repoId]);
      return { body: res.body, entry: list[0]! };
    }, 30_000);
    expect(stuck.entry.failures).to.be.at.least(3);
    expect(Number.isNaN(Date.parse(stuck.entry.since))).to.equal(false);
    expect(stuck.entry.last_error).to.include('refs/heads/topic');
    // Every field /health had before is still there.
    expect(stuck.body).to.include({ status: 'ok', server_id: n3.serverId, peers: 2, peers_reachable: 2 });
    expect(stuck.body).to.have.keys('status', 'server_id', 'url', 'timestamp', 'load', 'peers', 'peers_reachable', 'peer_status', 'quorum', 'repos', 'replicas_not_converging');
    for (const node of [n1, cluster.node(2)]) expect((await node.health()).body.replicas_not_converging, node.serverId).to.deep.equal([]);
    expect((await repoVersion(n3, repoId)).generation).to.be.below(majority.generation);
    // Logged loudly once, not on every round.
    const notConvergingLines = (): string[] => n3.logText().split('\n').filter((l) => l.includes('"message":"replica is not converging"') && l.includes(repoId));
    expect(notConvergingLines()).to.have.length(1);
    expect(notConvergingLines()[0]).to.include('"level":"error"');

    // The operator removes the file: the next round catches up, and the report goes.
    await fs.rm(junkDir, { recursive: true });
    await eventually(async () => {
      expect((await n3.health()).body.replicas_not_converging).to.deep.equal([]);
      expect((await repoVersion(n3, repoId)).generation).to.equal(majority.generation);
    }, 30_000);
    expect((await diskRefs(git, n3, repoId))['refs/heads/topic']).to.equal(topic);
    expect(n3.logText()).to.match(/"message":"replica is converging again"/);
    expect(notConvergingLines()).to.have.length(1);
  });
});
