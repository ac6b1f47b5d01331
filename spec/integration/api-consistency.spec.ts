import { expect } from 'chai';
import { Cluster, eventually, http, printLogsOnFailure, type TestNode } from '../support/cluster.js';

// The management API gives read-your-writes across nodes, like git reads: a node whose own catalog
// missed a create or a delete (it was down, and has not synced since) still answers GET, list and the
// create/delete pre-checks from the newest state among R = N-W+1 nodes.
//
// Node 1 never syncs by itself (SYNC_INTERVAL_MS of an hour): its first recovery round runs at start,
// and it is started while its peers are down, so that round learns nothing. What it knows afterwards
// is only what the 2PC tells it.

const NEVER_MS = '3600000';

async function waitRecovered(node: TestNode): Promise<void> {
  await eventually(async () => {
    const res = await node.internal('/internal/node');
    expect(res.status, res.text).to.equal(200);
    expect(res.body.recovered).to.equal(true);
  }, 15_000);
}

describe('management API consistency across nodes (3-node cluster, one node behind)', function () {
  let cluster: Cluster;

  before(async function () {
    cluster = await Cluster.create(3, { start: false });
    cluster.node(1).env.SYNC_INTERVAL_MS = NEVER_MS;
    await cluster.heal();
    const [n1, n2, n3] = cluster.nodes as [TestNode, TestNode, TestNode];

    // Known to all three, then deleted while node 1 is away.
    expect((await n2.createRepo('team/gone')).status).to.equal(201);
    expect((await n1.getRepo('team/gone')).status).to.equal(200);
    await n1.stop();
    const fresh = await n2.createRepo('team/fresh');
    expect(fresh.status, fresh.text).to.equal(201);
    expect(fresh.body.nodes_confirmed).to.have.length(2);
    const gone = await n2.deleteRepo('team/gone');
    expect(gone.status, gone.text).to.equal(204);

    // Node 1 comes back alone, so its start-up sync finds no peer, then its peers come back.
    await Promise.all([n2.stop(), n3.stop()]);
    await n1.start();
    await waitRecovered(n1);
    await cluster.heal();
    // The premise: node 1's own catalog is behind on both.
    const catalog = (await n1.internal('/internal/catalog')).body.repos;
    expect(catalog['team/fresh']).to.equal(undefined);
    expect(catalog['team/gone']).to.include({ state: 'live' });
  });

  afterEach(function () {
    printLogsOnFailure(this, cluster);
  });

  after(async function () {
    await cluster?.destroy();
  });

  it('answers GET /repos/:o/:n with 200 on the node that missed the create, with the newest version and no path', async function () {
    const res = await cluster.node(1).getRepo('team/fresh');
    expect(res.status, res.text).to.equal(200);
    // The version, and the repo's settings (lib/core/repo-settings.ts); never the server's path.
    expect(res.body).to.include.all.keys('repo_id', 'exists', 'epoch', 'generation', 'visibility', 'settings_version');
    expect(res.body).not.to.have.any.keys('path');
    expect(res.body).to.include({ repo_id: 'team/fresh', exists: true, generation: 0 });
    const onNode2 = await cluster.node(2).getRepo('team/fresh');
    expect(res.body).to.deep.equal(onNode2.body);
  });

  it('answers GET /repos/:o/:n with 404 on the node that missed the delete', async function () {
    const res = await cluster.node(1).getRepo('team/gone');
    expect(res.status, res.text).to.equal(404);
    expect(res.body).to.include({ repo_id: 'team/gone', exists: false });
    expect(res.body.error.code).to.equal('repo_not_found');
  });

  it('lists the missed create and not the missed delete in GET /repos on the node behind', async function () {
    const listed = await cluster.node(1).listRepos();
    expect(listed).to.include('team/fresh');
    expect(listed).not.to.include('team/gone');
    expect(listed).to.deep.equal(await cluster.node(3).listRepos());
  });

  it('refuses a create of a repo it missed with 409 repo_exists', async function () {
    const res = await cluster.node(1).createRepo('team/fresh');
    expect(res.status, res.text).to.equal(409);
    expect(res.body.error.code).to.equal('repo_exists');
  });

  it('creates again a repo whose delete it missed (201), instead of 409 from its stale catalog', async function () {
    const res = await cluster.node(1).createRepo('team/gone');
    expect(res.status, res.text).to.equal(201);
    for (const n of [2, 3]) expect((await cluster.node(n).getRepo('team/gone')).status).to.equal(200);
  });

  it('deletes through the node that missed the create (204), and every node then answers 404', async function () {
    const res = await cluster.node(1).deleteRepo('team/fresh');
    expect(res.status, res.text).to.equal(204);
    for (const node of cluster.nodes) expect((await node.getRepo('team/fresh')).status).to.equal(404);
  });

  it('answers 503 read_quorum_unreachable to GET and list when fewer than R nodes answer', async function () {
    const [n1, n2, n3] = cluster.nodes as [TestNode, TestNode, TestNode];
    await Promise.all([n2.stop(), n3.stop()]);
    try {
      const one = await n1.getRepo('team/gone');
      expect(one.status, one.text).to.equal(503);
      expect(one.body.error.code).to.equal('read_quorum_unreachable');
      const list = await http(`${n1.url}/repos`);
      expect(list.status, list.text).to.equal(503);
      expect(list.body.error.code).to.equal('read_quorum_unreachable');
    } finally {
      await cluster.heal();
    }
  });
});
