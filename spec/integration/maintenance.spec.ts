import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { Cluster, GitClient, eventually, type TestNode, withCluster } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, expectConverged, expectFsckClean, expectPushed } from '../support/push-helpers.js';

// Housekeeping: receive-pack runs no gc inside a push; every replica runs `git gc --auto` on a repo
// once it has been quiet for GC_DELAY_MS. Each push leaves one more pack on every replica (peers
// install the shipped pack as is), so without it a peer would collect packs without end.

describe('background gc on every replica (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;

  // gc --auto repacks once a repo holds more than 4 packs (git's default is 50).
  const env = { GC_DELAY_MS: '300', GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'gc.autoPackLimit', GIT_CONFIG_VALUE_0: '4' };
  withCluster(3, { env }, (c, g) => {
    [cluster, git] = [c, g];
    n1 = c.nodes[0]!;
  });

  const packs = async (node: TestNode, repoId: string): Promise<number> =>
    (await fs.readdir(path.join(node.repoDir(repoId), 'objects', 'pack'))).filter((f) => f.endsWith('.pack')).length;

  it('repacks each replica once pushes stop, and the refs and objects stay whole', async function () {
    const repoId = 'gc/many-pushes';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'gc');
    let last = '';
    for (let i = 1; i <= 7; i += 1) {
      last = await commitFile(git, work, 'n.txt', `push ${i}\n`);
      expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    }
    const agreed = await expectConverged(cluster, git, repoId);
    expect(agreed.refs).to.deep.equal({ 'refs/heads/main': last });
    // Seven pushes made seven packs on each replica; once quiet, gc --auto folds them into one.
    await eventually(async () => {
      for (const node of cluster.nodes) expect(await packs(node, repoId), node.serverId).to.be.at.most(1);
    }, 20_000);
    for (const node of cluster.nodes) await expectFsckClean(git, node, repoId);

    // Pushes go on as before after a repack.
    const next = await commitFile(git, work, 'n.txt', 'after gc\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    expect((await expectConverged(cluster, git, repoId)).refs).to.deep.equal({ 'refs/heads/main': next });
  });
});
