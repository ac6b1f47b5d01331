import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { LONG_2PC_ENV, type Cluster, type GitClient, type TestNode, eventually, http, withCluster } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, expectPushed, metricTotal, repoCoordinatedBy, scrapeMetrics } from '../support/push-helpers.js';

// What an operator sees of a running 3-node cluster: GET /metrics (Prometheus text) moved by a
// create, a push and a clone; /health/live and /health/ready as a load balancer asks them; and a
// client's x-request-id followed through a push from the coordinator to its peers' logs.

/** The JSON log lines of a node that carry `requestId`. */
function linesWith(node: TestNode, requestId: string): Record<string, unknown>[] {
  return node
    .logText()
    .split('\n')
    .filter((line) => line.includes(requestId))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((entry) => entry.request_id === requestId);
}

describe('operator view: metrics, health, request ids (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;
  let repoId: string;
  let work: string;

  // No spec here needs a protocol timer to fire (a stopped node refuses connections at once), so the
  // 2PC timeouts are long: a prepare slower than the harness's 1 s on a loaded machine is no failure.
  const env = { ...LONG_2PC_ENV, PREPARE_TIMEOUT_MS: '30000' };
  withCluster(3, { env }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, n2, n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  before(async function () {
    // Pushed to node 1, its coordinator, so that the push's id can reach the other nodes only with
    // its transaction (not with a proxied request).
    repoId = repoCoordinatedBy(cluster, n1, 'ops', 'view');
    await createRepo(cluster, n1, repoId);
    work = await cloneLocal(git, n2, repoId, 'ops-work');
  });

  it('answers GET /metrics in Prometheus text, its counters moved by a create, a push and a clone', async function () {
    const before = await Promise.all(cluster.nodes.map(scrapeMetrics));
    const created = `ops/created-${randomBytes(3).toString('hex')}`;
    expect((await n1.createRepo(created)).status).to.equal(201);
    await commitFile(git, work, 'metrics.txt', 'counted\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await git.ok(['clone', '--quiet', n3.gitUrl(repoId), `${await git.tempDir('ops-clone')}/clone`]);
    // The push's answer waits for a quorum, a response's metrics are recorded when it closes: read until settled.
    await eventually(async () => {
      const after = await Promise.all(cluster.nodes.map(scrapeMetrics));
      const moved = (name: string, labels: Record<string, string>, i?: number): number =>
        i === undefined
          ? after.reduce((s, t) => s + metricTotal(t, name, labels), 0) - before.reduce((s, t) => s + metricTotal(t, name, labels), 0)
          : metricTotal(after[i]!, name, labels) - metricTotal(before[i]!, name, labels);
      expect(moved('quorum_git_txns_total', { kind: 'create', outcome: 'committed' }, 0)).to.equal(1);
      expect(moved('quorum_git_txns_total', { kind: 'push', outcome: 'committed' }, 0)).to.equal(1);
      expect(moved('quorum_git_txn_duration_seconds_count', { kind: 'push' }, 0)).to.equal(1);
      // Its small pack rode inside the prepare to each peer.
      expect(moved('quorum_git_push_pack_shipments_total', { how: 'inline' }, 0)).to.equal(2);
      expect(moved('quorum_git_http_requests_total', { route: 'api', status: '201' }, 0)).to.equal(1);
      expect(moved('quorum_git_git_rpcs_total', { service: 'receive-pack', origin: 'client', outcome: 'ok' }, 0)).to.equal(1);
      expect(moved('quorum_git_git_received_bytes_total', { service: 'receive-pack' }, 0)).to.be.greaterThan(0);
      // The clone was served by node 3 or, were it behind, by a node it proxied to.
      expect(moved('quorum_git_git_rpcs_total', { service: 'upload-pack' })).to.be.at.least(1);
      expect(moved('quorum_git_git_sent_bytes_total', { service: 'upload-pack' })).to.be.greaterThan(0);
      expect(moved('quorum_git_http_requests_total', { route: 'git' })).to.be.at.least(4);
      expect(moved('quorum_git_http_requests_total', { route: 'internal' }, 1)).to.be.at.least(2);
      // A heartbeat (200 ms to answer) can miss on a loaded machine: read until both peers are up.
      expect(metricTotal(after[0]!, 'quorum_git_peer_up', { peer: n2.url })).to.equal(1);
      expect(metricTotal(after[0]!, 'quorum_git_peer_up', { peer: n3.url })).to.equal(1);
    });
    const text = await scrapeMetrics(n1);
    expect(metricTotal(text, 'quorum_git_peer_rtt_seconds_count', { peer: n2.url })).to.be.greaterThan(0);
    expect(metricTotal(text, 'quorum_git_txns_in_doubt')).to.equal(0);
    expect(metricTotal(text, 'quorum_git_write_quorum')).to.equal(2);
    expect(metricTotal(text, 'quorum_git_node_info', { server_id: 'node-1' })).to.equal(1);
    expect(text).to.match(/^process_resident_memory_bytes \d+/m);
  });

  it("carries a client's x-request-id through a push: the coordinator's transaction and its peers' logs", async function () {
    const requestId = `spec-push-${randomBytes(6).toString('hex')}`;
    await commitFile(git, work, 'traced.txt', `${requestId}\n`);
    expectPushed(await git.run(['-c', `http.extraHeader=x-request-id: ${requestId}`, 'push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await eventually(() => {
      // The coordinator ran the push's transaction under the client's id (the hook sent it back)...
      const coordinator = linesWith(n1, requestId).map((e) => e.message);
      expect(coordinator).to.include.members(['txn started', 'push committed']);
      // ...and sent it with its prepares: every peer logs the request under the same id.
      for (const peer of [n2, n3]) {
        const prepares = linesWith(peer, requestId).filter((e) => e.message === 'request' && e.path === '/internal/txn/prepare');
        expect(prepares, `${peer.serverId} logged no prepare with ${requestId}`).to.have.length.at.least(1);
      }
    });
  });

  it('answers with the request id it was given when safe, and with a new one otherwise', async function () {
    const kept = await http(`${n2.url}/health/live`, { headers: { 'x-request-id': 'lb-check-1' } });
    expect(kept.headers.get('x-request-id')).to.equal('lb-check-1');
    const replaced = await http(`${n2.url}/health/live`, { headers: { 'x-request-id': 'x'.repeat(129) } });
    expect(replaced.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
  });

  it('answers /health/live while the process runs and /health/ready only with a quorum reachable', async function () {
    expect((await http(`${n1.url}/health/live`)).body).to.deep.equal({ status: 'live', server_id: 'node-1' });
    await eventually(async () => expect((await http(`${n1.url}/health/ready`)).body).to.deep.equal({ status: 'ready', server_id: 'node-1' }));
    // A majority down: two nodes frozen (SIGSTOP) answer no heartbeat, as a dead or cut-off node would,
    // and come back without a restart.
    process.kill(n2.pid, 'SIGSTOP');
    process.kill(n3.pid, 'SIGSTOP');
    try {
      const notReady = await eventually(async () => {
        const res = await http(`${n1.url}/health/ready`);
        expect(res.status).to.equal(503);
        return res;
      });
      expect(notReady.body.error.code).to.equal('not_ready');
      expect(notReady.body.error.message).to.include('1 of 3 nodes reachable, a write quorum needs 2');
      expect((await http(`${n1.url}/health/live`)).status).to.equal(200);
      const health = await n1.health();
      expect(health.status).to.equal(200);
      expect(health.body).to.include({ status: 'ok', peers: 2, peers_reachable: 0, quorum: 2 });
      expect(metricTotal(await scrapeMetrics(n1), 'quorum_git_ready')).to.equal(0);
      // One node back makes a majority again.
      process.kill(n2.pid, 'SIGCONT');
      await eventually(async () => expect((await http(`${n1.url}/health/ready`)).status).to.equal(200));
      expect(metricTotal(await scrapeMetrics(n1), 'quorum_git_ready')).to.equal(1);
    } finally {
      process.kill(n2.pid, 'SIGCONT');
      process.kill(n3.pid, 'SIGCONT');
    }
  });
});
