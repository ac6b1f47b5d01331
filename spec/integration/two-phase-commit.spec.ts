import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import {
  Cluster,
  GitClient,
  SYNC_INTERVAL_MS,
  eventually,
  listTree,
  pathExists,
  withCluster,
  sleep,
  type TestNode,
} from '../support/cluster.js';

// Repository create and delete committed by two-phase commit on a 3-node cluster (quorum 2), with
// nodes killed (SIGKILL) and restarted: what every node holds afterwards, on the API and on disk.
// One cluster serves every spec; each spec starts with all three nodes up and seeing each other, and
// uses its own repo names.

/** Long enough for several anti-entropy and recovery rounds (SYNC_INTERVAL_MS) to have run. */
const SEVERAL_SYNC_ROUNDS_MS = 6 * SYNC_INTERVAL_MS;

function uniqueTxnId(label: string): string {
  return `spec-${label}-${randomBytes(4).toString('hex')}`;
}

describe('two-phase commit of repo create and delete (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;

  /** Every node reports the repo and has its bare dir. */
  async function expectEverywhere(repoId: string): Promise<void> {
    expect(await cluster.repoEverywhere(repoId)).to.deep.equal(cluster.nodes.map(() => ({ status: 200, onDisk: true })));
  }

  /** No node reports the repo or has its bare dir. */
  async function expectNowhere(repoId: string): Promise<void> {
    expect(await cluster.repoEverywhere(repoId)).to.deep.equal(cluster.nodes.map(() => ({ status: 404, onDisk: false })));
  }

  async function cloneFrom(node: TestNode, repoId: string): Promise<{ code: number | null; stderr: string }> {
    const dir = path.join(await git.tempDir('clone'), 'repo');
    return git.run(['clone', node.gitUrl(repoId), dir]);
  }

  /** Sends a prepare to `node` as if `coordinator` ran the transaction. */
  async function prepare(node: TestNode, txnId: string, repoId: string, coordinator: TestNode): Promise<Record<string, unknown>> {
    const res = await node.internal('/internal/txn/prepare', { type: 'prepare', txnId, op: { kind: 'create', repoId }, coordinator: coordinator.url }, coordinator.url);
    expect(res.status, res.text).to.equal(200);
    return res.body;
  }

  async function queryTxn(node: TestNode, txnId: string, query = ''): Promise<{ outcome: string; epoch?: number }> {
    const res = await node.internal(`/internal/txn/${txnId}${query}`);
    expect(res.status, res.text).to.equal(200);
    return res.body;
  }

  withCluster(3, { healAfterEach: true }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, n2, n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  describe('with every node up', function () {
    it('creates the repo on every node, and the nodes that confirmed it serve a clone at once', async function () {
      const repoId = 'team/all-up';
      const created = await n1.createRepo(repoId);
      expect(created.status, created.text).to.equal(201);
      expect(created.body).to.include({ repo_id: repoId, created: true, replicated: true, epoch: 1, quorum: 2 });
      expect(created.body.peers_confirmed).to.be.within(1, 2);
      for (const url of created.body.nodes_confirmed as string[]) {
        const node = cluster.nodes.find((n) => n.url === url)!;
        const clone = await cloneFrom(node, repoId);
        expect(clone.code, `${node.serverId}: ${clone.stderr}`).to.equal(0);
      }
      await eventually(() => expectEverywhere(repoId));
    });

    it('replicates a delete to every node, after which git clone fails everywhere', async function () {
      const repoId = 'team/deleted';
      expect((await n1.createRepo(repoId)).status).to.equal(201);
      await eventually(() => expectEverywhere(repoId));

      const deleted = await n2.deleteRepo(repoId);
      expect(deleted.status, deleted.text).to.equal(204);
      expect(deleted.text).to.equal('');
      await eventually(() => expectNowhere(repoId));
      for (const node of cluster.nodes) {
        const clone = await cloneFrom(node, repoId);
        expect(clone.code, `${node.serverId} still serves the deleted repo`).to.not.equal(0);
      }
      const again = await n3.deleteRepo(repoId);
      expect(again.status).to.equal(404);
      expect(again.body.error.code).to.equal('repo_not_found');
    });

    it('gives exactly one of two concurrent creates of one name, on different nodes, the repo (3 rounds, each node against each)', async function () {
      const pairs: [TestNode, TestNode][] = [
        [n1, n2],
        [n2, n3],
        [n3, n1],
      ];
      for (const [round, [a, b]] of pairs.entries()) {
        const repoId = `race/round-${round}`;
        const [ra, rb] = await Promise.all([a.createRepo(repoId), b.createRepo(repoId)]);
        const statuses = [ra.status, rb.status];
        const label = `round ${round} (${a.serverId} vs ${b.serverId}): ${ra.text} | ${rb.text}`;
        expect(statuses.filter((s) => s === 201), label).to.have.length(1);
        expect(statuses.find((s) => s !== 201), label).to.be.oneOf([409, 503]);
        const loser = ra.status === 201 ? rb : ra;
        expect(loser.body.error.code, label).to.be.oneOf(['repo_exists', 'repo_busy', 'quorum_unreachable']);
        await eventually(() => expectEverywhere(repoId));
      }
    });
  });

  describe('with nodes down', function () {
    it('creates with one node killed, and the node gets the repo when it returns', async function () {
      const repoId = 'team/one-down';
      await n3.kill();
      const created = await n1.createRepo(repoId);
      expect(created.status, created.text).to.equal(201);
      expect(created.body).to.include({ replicated: true, peers_confirmed: 1 });
      expect(created.body.nodes_confirmed).to.have.members([n1.url, n2.url]);
      expect((await n2.getRepo(repoId)).status).to.equal(200);
      expect(await pathExists(n3.repoDir(repoId))).to.equal(false);

      await n3.start();
      await eventually(async () => {
        expect((await n3.getRepo(repoId)).status).to.equal(200);
        expect(await pathExists(n3.repoDir(repoId))).to.equal(true);
      });
      const clone = await cloneFrom(n3, repoId);
      expect(clone.code, clone.stderr).to.equal(0);
    });

    it('refuses a create with 503 quorum_unreachable naming the failed peers when two nodes are down, and no node has it later', async function () {
      const repoId = 'team/two-down';
      await Promise.all([n2.kill(), n3.kill()]);
      const res = await n1.createRepo(repoId);
      expect(res.status, res.text).to.equal(503);
      expect(res.body.error.code).to.equal('quorum_unreachable');
      expect(res.body.error.failed_peers).to.have.members([n2.url, n3.url]);
      expect(res.body.error.message).to.include(n2.url).and.include(n3.url);
      // With two of three down, this node cannot prove what R nodes hold: the API read says so (503),
      // rather than answering from its own memory; its own disk has nothing.
      const read = await n1.getRepo(repoId);
      expect(read.status, read.text).to.equal(503);
      expect(read.body.error.code).to.equal('read_quorum_unreachable');
      expect(await pathExists(n1.repoDir(repoId))).to.equal(false);
      // The coordinator's own prepared staging copy is discarded with the abort (just after the reply).
      await eventually(async () => expect(await listTree(path.join(n1.dataDir, 'staging'))).to.deep.equal([]));

      await cluster.heal();
      await sleep(SEVERAL_SYNC_ROUNDS_MS);
      await expectNowhere(repoId);

      // Nothing was left locked: the same create now succeeds.
      expect((await n1.createRepo(repoId)).status).to.equal(201);
      await eventually(() => expectEverywhere(repoId));
    });

    it('does not let a node that missed a delete resurrect the repo, and a new create of the name starts a new epoch', async function () {
      const repoId = 'team/tombstone';
      expect((await n1.createRepo(repoId)).status).to.equal(201);
      await eventually(() => expectEverywhere(repoId));

      await n3.kill();
      expect((await n1.deleteRepo(repoId)).status).to.equal(204);
      for (const node of [n1, n2]) {
        expect((await node.getRepo(repoId)).status).to.equal(404);
      }
      expect(await pathExists(n3.repoDir(repoId)), 'node 3 was down: its copy is still on disk').to.equal(true);

      await n3.start();
      await eventually(async () => {
        expect((await n3.getRepo(repoId)).status).to.equal(404);
        expect(await pathExists(n3.repoDir(repoId))).to.equal(false);
      });
      await sleep(SEVERAL_SYNC_ROUNDS_MS);
      await expectNowhere(repoId);
      expect((await cloneFrom(n3, repoId)).code).to.not.equal(0);

      // create (epoch 1), delete (epoch 2), create again (epoch 3): a new incarnation, everywhere.
      const recreated = await n3.createRepo(repoId);
      expect(recreated.status, recreated.text).to.equal(201);
      expect(recreated.body.epoch).to.equal(3);
      await eventually(() => expectEverywhere(repoId));
      const clone = await cloneFrom(n3, repoId);
      expect(clone.code, clone.stderr).to.equal(0);
    });
  });

  describe('a participant killed while prepared', function () {
    // Reproducible by driving the internal API directly: the spec plays the coordinator, sends the
    // prepare, and decides what the coordinator's log holds.

    it('aborts with the other live node when the coordinator is dead for good, so the repo is writable again without it', async function () {
      const repoId = 'doubt/presumed-abort';
      const txnId = uniqueTxnId('abort');
      // Node 1 is the coordinator that crashed before any replica accepted a commit: down for good.
      await n1.kill();
      expect(await prepare(n2, txnId, repoId, n1)).to.include({ vote: 'yes', epoch: 0 });
      expect(await pathExists(path.join(n2.dataDir, 'staging', `${txnId}.git`)), 'staged out of sight').to.equal(true);
      expect((await n2.getRepo(repoId)).status).to.equal(404);

      // Defect 5: with 3 nodes this used to stay locked until node 1 returned. Node 2 (prepared) and
      // node 3 (never prepared) refuse it: N - W + 1 = 2 refusals prove no commit can ever be final.
      await eventually(async () => expect(await queryTxn(n2, txnId)).to.include({ outcome: 'aborted' }), 20_000);
      // Node 3 refused it; the proven abort is then told to every peer, so it may say either.
      expect((await queryTxn(n3, txnId)).outcome).to.be.oneOf(['refused', 'aborted']);
      await eventually(async () => expect(await listTree(path.join(n2.dataDir, 'staging')), 'staging discarded').to.deep.equal([]));
      for (const node of [n2, n3]) expect((await node.getRepo(repoId)).status).to.equal(404);

      // The repo is writable with node 1 still down: a create of the same name commits on nodes 2 and 3.
      const created = await n2.createRepo(repoId);
      expect(created.status, created.text).to.be.oneOf([201, 202]);
      // The coordinator returns with no decision logged: it answers abort for good (presumed abort).
      await n1.start();
      expect(await queryTxn(n1, txnId, '?coordinator=1')).to.include({ outcome: 'aborted' });
      await cluster.heal();
      await eventually(() => expectEverywhere(repoId));
    });

    it('does not apply a decision that no replica accepted: the live nodes abort it and the coordinator learns so', async function () {
      const repoId = 'doubt/unaccepted-commit';
      const txnId = uniqueTxnId('unaccepted');
      await n1.kill();
      expect(await prepare(n2, txnId, repoId, n1)).to.include({ vote: 'yes', epoch: 0 });
      expect(await prepare(n3, txnId, repoId, n1)).to.include({ vote: 'yes', epoch: 0 });
      // What a coordinator leaves when it crashes after logging its decision and before any replica
      // accepted it: the decision line in its fsynced log, as TxnLog writes it. One copy of a decision
      // is not final (W = 2), and nothing was acknowledged, so aborting it is safe.
      const decision = { t: 'decision', txnId, outcome: 'commit', op: { kind: 'create', repoId }, epoch: 1, generation: 0 };
      await fs.appendFile(path.join(n1.dataDir, 'txn.log'), `${JSON.stringify(decision)}\n`);
      // Whichever of the two proves the abort first records it; the other has refused it for good (a
      // proven abort relayed by a node that is not the coordinator is not taken: lib/cluster/internal-messages.ts).
      await eventually(async () => {
        const outcomes = [(await queryTxn(n2, txnId)).outcome, (await queryTxn(n3, txnId)).outcome];
        expect(outcomes).to.include('aborted');
        expect(outcomes.every((o) => o === 'aborted' || o === 'refused'), outcomes.join(', ')).to.equal(true);
      }, 20_000);
      await n1.start();
      // The restarted coordinator settles its own decision with the others: abort, logged.
      await eventually(async () => expect(await queryTxn(n1, txnId, '?coordinator=1')).to.include({ outcome: 'aborted' }), 20_000);
      await expectNowhere(repoId);
    });

    it("commits after a restart when one replica applied the coordinator's decision before it crashed", async function () {
      const repoId = 'doubt/logged-commit';
      const txnId = uniqueTxnId('commit');
      await n1.kill();
      expect(await prepare(n2, txnId, repoId, n1)).to.include({ vote: 'yes', epoch: 0 });
      expect(await prepare(n3, txnId, repoId, n1)).to.include({ vote: 'yes', epoch: 0 });
      const decision = { t: 'decision', txnId, outcome: 'commit', op: { kind: 'create', repoId }, epoch: 1, generation: 0 };
      await fs.appendFile(path.join(n1.dataDir, 'txn.log'), `${JSON.stringify(decision)}\n`);
      // The decision reached node 3 (final: the coordinator's log and node 3 are W = 2), then node 1 died.
      const commit = await n3.internal('/internal/txn/commit', { type: 'commitTxn', txnId, epoch: 1, generation: 0, final: true }, n1.url);
      expect(commit.body).to.deep.equal({ vote: 'yes', epoch: 1, generation: 0 });
      await n2.kill();
      await n2.start();

      // Node 2 restarts in doubt, cannot reach node 1, and learns the commit from node 3.
      await eventually(async () => expect(await queryTxn(n2, txnId)).to.include({ outcome: 'committed', epoch: 1 }), 20_000);
      await n1.start();
      // Node 1 never prepared its own create; it adopts the repo by anti-entropy.
      await eventually(() => expectEverywhere(repoId));
      const clone = await cloneFrom(n2, repoId);
      expect(clone.code, clone.stderr).to.equal(0);
    });
  });

  describe('GET /internal/txn/:txnId', function () {
    it('answers a coordinator query for a transaction it has no decision for with a final abort', async function () {
      const txnId = uniqueTxnId('unknown');
      expect(await queryTxn(n1, txnId, '?coordinator=1')).to.include({ outcome: 'aborted' });
      // Logged before answering: the answer survives a crash and never changes.
      await n1.kill();
      await n1.start();
      expect(await queryTxn(n1, txnId, '?coordinator=1')).to.include({ outcome: 'aborted' });
      expect(await queryTxn(n1, txnId)).to.include({ outcome: 'aborted' });
    });

    it('answers pending for a transaction a node never saw, and refused for good when asked to refuse', async function () {
      const txnId = uniqueTxnId('refuse');
      expect(await queryTxn(n3, txnId)).to.include({ outcome: 'pending' });
      expect(await queryTxn(n3, txnId, '?refuse=1')).to.include({ outcome: 'refused' });
      await n3.kill();
      await n3.start();
      // The promise outlives a crash: a late prepare of that transaction is voted down.
      expect(await prepare(n3, txnId, 'doubt/refused', n1)).to.include({ vote: 'no', code: 'refused' });
      // Node 3 refused it; the proven abort is then told to every peer, so it may say either.
      expect((await queryTxn(n3, txnId)).outcome).to.be.oneOf(['refused', 'aborted']);
      expect(await pathExists(n3.repoDir('doubt/refused'))).to.equal(false);
    });

    it('refuses queries without the cluster secret', async function () {
      const res = await fetch(`${n1.url}/internal/txn/${uniqueTxnId('noauth')}?coordinator=1`);
      expect(res.status).to.equal(401);
    });
  });
});
