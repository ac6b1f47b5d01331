import path from 'node:path';
import { promises as fs } from 'node:fs';
import { expect } from 'chai';
import { Cluster, eventually, http, listTree, printLogsOnFailure, rawHttp, type HttpResult, type TestNode } from '../support/cluster.js';

// The management API of a 2-node cluster (quorum 2): create and look up repositories, refuse every
// malformed request with a 4xx and a stable error code before anything touches the disk, and report
// health. Plus: a node refuses to start with a write quorum that is not a majority.

/** Every error body is `{error: {code, message}}` and never leaks a stack trace. */
function expectErrorBody(res: HttpResult, code: string): void {
  expect(res.headers.get('content-type') ?? '').to.match(/^application\/json/);
  expect(res.body, res.text).to.be.an('object');
  expect(res.body.error, res.text).to.be.an('object');
  expect(res.body.error.code, res.text).to.equal(code);
  expect(res.body.error.message).to.be.a('string').and.not.equal('');
  expect(res.body.error).not.to.have.property('stack');
  expect(res.text).not.to.match(/\n\s+at |\.js:\d+|\.ts:\d+/);
}

describe('management API (2-node cluster)', function () {
  let cluster: Cluster;

  before(async function () {
    cluster = await Cluster.create(2);
  });

  afterEach(function () {
    printLogsOnFailure(this, cluster);
  });

  after(async function () {
    await cluster?.destroy();
  });

  describe('POST /repos and GET /repos/:owner/:name', function () {
    it('creates a repo on node 1 that node 2 then reports as existing (the quick start)', async function () {
      const [n1, n2] = cluster.nodes as [TestNode, TestNode];
      const created = await n1.createRepo('alice/hello');
      expect(created.status, created.text).to.equal(201);
      expect(created.body).to.include({ repo_id: 'alice/hello', created: true, replicated: true, peers_confirmed: 1 });
      expect(created.body.clone_url).to.equal(`${n1.url}/alice/hello.git`);

      const seen = await n2.getRepo('alice/hello');
      expect(seen.status, seen.text).to.equal(200);
      // No filesystem path: it would leak the server's layout.
      expect(seen.body).to.deep.equal({
        repo_id: 'alice/hello',
        exists: true,
        epoch: created.body.epoch,
        generation: 0,
        visibility: 'private',
        protected_branches: [],
        collaborators: {},
        settings_version: 0,
      });
      for (const node of cluster.nodes) expect(await listTree(node.reposDir)).to.include('alice/hello.git/HEAD');
    });

    it('lists the created repo on every node', async function () {
      await cluster.node(1).createRepo('alice/listed');
      for (const node of cluster.nodes) expect(await node.listRepos()).to.include('alice/listed');
    });

    it('answers 404 with exists:false for a repo that was never created', async function () {
      const res = await cluster.node(2).getRepo('nobody/nothing');
      expect(res.status).to.equal(404);
      expect(res.body).to.include({ repo_id: 'nobody/nothing', exists: false });
      expectErrorBody(res, 'repo_not_found');
    });

    it('refuses a second create of the same repo with 409 repo_exists, on either node', async function () {
      expect((await cluster.node(1).createRepo('alice/twice')).status).to.equal(201);
      for (const node of cluster.nodes) {
        const again = await node.createRepo('alice/twice');
        expect(again.status, again.text).to.equal(409);
        expectErrorBody(again, 'repo_exists');
      }
    });
  });

  describe('invalid input', function () {
    const long = 'x'.repeat(101);
    const bodyRows: { title: string; body: string; status: number; code: string }[] = [
      ...[
        ['a space in the owner', 'own er/name'],
        ['a space in the name', 'owner/na me'],
        ['a "!" in the name', 'owner/name!'],
        ['a "~" in the owner', 'ow~ner/name'],
        ['a non-ASCII letter', 'owner/näme'],
        ['a backslash', 'owner/na\\me'],
        ['a NUL byte', 'owner/na\u0000me'],
        ['a third path part', 'owner/name/extra'],
        ['no slash', 'ownername'],
        ['an empty owner', '/name'],
        ['an empty name', 'owner/'],
        ['only a slash', '/'],
        ['an empty string', ''],
        ['an owner of 101 characters', `${long}/name`],
        ['a name of 101 characters', `owner/${long}`],
        ['an owner starting with "."', '.owner/name'],
        ['a name starting with "."', 'owner/.name'],
        ['an owner starting with "-"', '-owner/name'],
        ['a name starting with "-"', 'owner/-name'],
        ['a name of "."', 'owner/.'],
        ['a name of ".."', 'owner/..'],
        ['an owner of ".."', '../name'],
        ['a name ending in ".git"', 'owner/name.git'],
        ['a name ending in ".GIT"', 'owner/NAME.GIT'],
      ].map(([title, repoId]) => ({ title: `repo_id with ${title}`, body: JSON.stringify({ repo_id: repoId }), status: 400, code: 'invalid_repo_id' })),
      ...['repos', 'health', 'metrics', 'internal', 'Repos'].map((owner) => ({
        title: `the reserved owner "${owner}"`,
        body: JSON.stringify({ repo_id: `${owner}/name` }),
        status: 400,
        code: 'reserved_owner',
      })),
      { title: 'a body without repo_id', body: '{}', status: 400, code: 'invalid_body' },
      { title: 'repo_id as a number', body: '{"repo_id":42}', status: 400, code: 'invalid_body' },
      { title: 'repo_id as null', body: '{"repo_id":null}', status: 400, code: 'invalid_body' },
      { title: 'repo_id as an array', body: '{"repo_id":["owner","name"]}', status: 400, code: 'invalid_body' },
      { title: 'repo_id as an object', body: '{"repo_id":{"owner":"o","name":"n"}}', status: 400, code: 'invalid_body' },
      { title: 'an unknown extra field', body: '{"repo_id":"owner/extra","private":true}', status: 400, code: 'invalid_body' },
      { title: 'a JSON array', body: '["owner/name"]', status: 400, code: 'invalid_body' },
      { title: 'a JSON string', body: '"owner/name"', status: 400, code: 'invalid_body' },
      { title: 'a JSON number', body: '42', status: 400, code: 'invalid_body' },
      { title: 'JSON null', body: 'null', status: 400, code: 'invalid_body' },
      { title: 'truncated JSON', body: '{"repo_id":', status: 400, code: 'invalid_json' },
      { title: 'not JSON at all', body: 'repo_id=owner/name', status: 400, code: 'invalid_json' },
      { title: 'an empty body', body: '', status: 400, code: 'invalid_json' },
      {
        title: 'a body over MAX_BODY_BYTES (16 KiB)',
        body: JSON.stringify({ repo_id: 'owner/big', pad: 'p'.repeat(20_000) }),
        status: 413,
        code: 'body_too_large',
      },
    ];

    const pathRows: { title: string; method: string; path: string; status: number; code: string }[] = [
      ...['GET', 'DELETE'].flatMap((method) => [
        { title: 'an encoded ".." owner', method, path: '/repos/%2e%2e/x', status: 400, code: 'invalid_path' },
        { title: 'an encoded ".." name', method, path: '/repos/owner/%2E%2E', status: 400, code: 'invalid_path' },
        { title: 'an encoded slash in the owner', method, path: '/repos/a%2Fb/c', status: 400, code: 'invalid_path' },
        { title: 'an encoded "../" prefix', method, path: '/repos/..%2f..%2fetc/passwd', status: 400, code: 'invalid_path' },
        { title: 'a literal ".." owner', method, path: '/repos/../x', status: 400, code: 'invalid_path' },
        { title: 'a backslash', method, path: '/repos/a\\b/c', status: 400, code: 'invalid_path' },
        { title: 'a name ending in ".git"', method, path: '/repos/owner/name.git', status: 400, code: 'invalid_repo_id' },
        { title: 'a reserved owner', method, path: '/repos/internal/name', status: 400, code: 'reserved_owner' },
      ]),
    ];

    let baseline: { repos: string[]; staging: string[]; listed: number }[];

    async function snapshot(): Promise<{ repos: string[]; staging: string[]; listed: number }[]> {
      return Promise.all(
        cluster.nodes.map(async (n) => ({
          repos: await listTree(n.reposDir),
          staging: await listTree(path.join(n.dataDir, 'staging')),
          listed: (await n.listRepos()).length,
        })),
      );
    }

    before(async function () {
      baseline = await snapshot();
    });

    for (const row of bodyRows) {
      it(`refuses POST /repos with ${row.title}: ${row.status} ${row.code}, nothing on disk`, async function () {
        const res = await http(`${cluster.node(1).url}/repos`, { body: row.body, headers: { 'content-type': 'application/json' } });
        expect(res.status, res.text).to.equal(row.status);
        expectErrorBody(res, row.code);
        expect(await snapshot()).to.deep.equal(baseline);
      });
    }

    for (const row of pathRows) {
      it(`refuses ${row.method} ${row.path} (${row.title}): ${row.status} ${row.code}`, async function () {
        const res = await rawHttp(cluster.node(2).url, row.method, row.path);
        expect(res.status, res.text).to.equal(row.status);
        expectErrorBody(res, row.code);
        expect(await snapshot()).to.deep.equal(baseline);
      });
    }

    it('refuses a POST /repos body that streams past the limit without a content-length', async function () {
      // Chunked: the limit must hold while reading, not only for a declared length.
      const streamed = await new Promise<HttpResult>((resolve, reject) => {
        const stream = new ReadableStream<Uint8Array>({
          start(controller) {
            controller.enqueue(new TextEncoder().encode(`{"repo_id":"owner/streamed","pad":"${'p'.repeat(40_000)}"}`));
            controller.close();
          },
        });
        fetch(`${cluster.node(1).url}/repos`, { method: 'POST', body: stream, duplex: 'half', headers: { 'content-type': 'application/json' } } as RequestInit)
          .then(async (r) => {
            const text = await r.text();
            resolve({ status: r.status, headers: r.headers, text, body: JSON.parse(text) });
          })
          .catch(reject);
      });
      expect(streamed.status, streamed.text).to.equal(413);
      expectErrorBody(streamed, 'body_too_large');
      expect(await snapshot()).to.deep.equal(baseline);
    });

    it('answers an unknown route with 404 not_found and a wrong method with 405', async function () {
      const unknown = await http(`${cluster.node(1).url}/nowhere`);
      expect(unknown.status).to.equal(404);
      expectErrorBody(unknown, 'not_found');
      const wrong = await http(`${cluster.node(1).url}/repos`, { method: 'PUT', body: '{}' });
      expect(wrong.status).to.equal(405);
      expectErrorBody(wrong, 'method_not_allowed');
    });

    it('refuses the internal API without the cluster secret', async function () {
      const res = await http(`${cluster.node(1).url}/internal/catalog`);
      expect(res.status).to.equal(401);
      expectErrorBody(res, 'unauthorized');
      const forged = await http(`${cluster.node(1).url}/internal/txn/prepare`, {
        headers: { 'x-quorum-secret': 'wrong' },
        json: { type: 'prepare', txnId: 'forged-1', op: { kind: 'create', repoId: 'evil/repo' }, coordinator: cluster.node(2).url },
      });
      expect(forged.status).to.equal(401);
      expect(await snapshot()).to.deep.equal(baseline);
    });

    it('refuses a peer message whose transaction id would name a directory outside its own, and touches nothing', async function () {
      const n1 = cluster.node(1);
      const marker = path.join(n1.dataDir, 'marker-outside-staging');
      await fs.writeFile(marker, 'still here\n');
      for (const txnId of ['..', '.', 'a/../..', '']) {
        for (const [step, msg] of [
          ['prepare', { type: 'prepare', txnId, op: { kind: 'create', repoId: 'evil/repo' }, coordinator: cluster.node(2).url }],
          ['abort', { type: 'abortTxn', txnId }],
        ] as const) {
          const res = await n1.internal(`/internal/txn/${step}`, msg);
          expect(res.status, `${step} ${JSON.stringify(txnId)}: ${res.text}`).to.equal(400);
          expectErrorBody(res, 'invalid_body');
        }
      }
      expect(await fs.readFile(marker, 'utf8')).to.equal('still here\n');
      await fs.rm(marker);
      expect(await snapshot()).to.deep.equal(baseline);
    });
  });

  describe('GET /health', function () {
    it('reports status, identity, load and every peer as reachable', async function () {
      const [n1, n2] = cluster.nodes as [TestNode, TestNode];
      const res = await eventually(async () => {
        const r = await n1.health();
        expect(r.body.peer_status[0].reachable).to.equal(true);
        return r;
      });
      expect(res.status).to.equal(200);
      expect(res.body).to.include({ status: 'ok', server_id: 'node-1', peers: 1 });
      expect(Date.parse(res.body.timestamp)).to.be.a('number').and.not.NaN;
      expect(res.body.load.cpu).to.be.a('number').within(0, 100);
      expect(res.body.load.memory).to.be.a('number').within(0, 100);
      expect(res.body.peer_status).to.have.length(1);
      expect(res.body.peer_status[0]).to.include({ url: n2.url, reachable: true });
    });

    it('reports a killed peer as unreachable, and reachable again once it is back', async function () {
      const [n1, n2] = cluster.nodes as [TestNode, TestNode];
      await n2.kill();
      try {
        await eventually(async () => {
          const r = await n1.health();
          expect(r.status).to.equal(200);
          expect(r.body.peer_status[0]).to.include({ url: n2.url, reachable: false });
        });
      } finally {
        await n2.start();
      }
      await eventually(async () => expect((await n1.health()).body.peer_status[0].reachable).to.equal(true));
    });
  });
});

describe('QUORUM setting at start', function () {
  let cluster: Cluster | undefined;

  afterEach(async function () {
    printLogsOnFailure(this, cluster);
    await cluster?.destroy();
    cluster = undefined;
  });

  const refused: { title: string; size: number; quorum: string; message: RegExp }[] = [
    { title: 'QUORUM=1 of 3 nodes (not a majority)', size: 3, quorum: '1', message: /QUORUM=1 is not a majority of 3 nodes/ },
    { title: 'QUORUM=2 of 4 nodes (exactly half)', size: 4, quorum: '2', message: /QUORUM=2 is not a majority of 4 nodes.*at least 3/ },
    { title: 'QUORUM=1 of 2 nodes (exactly half)', size: 2, quorum: '1', message: /QUORUM=1 is not a majority of 2 nodes/ },
    { title: 'QUORUM=4 of 3 nodes (more than the cluster)', size: 3, quorum: '4', message: /QUORUM=4 exceeds the cluster size 3/ },
    { title: 'QUORUM=0', size: 3, quorum: '0', message: /QUORUM must be an integer >= 1/ },
  ];

  for (const row of refused) {
    it(`refuses to start with ${row.title}, exiting non-zero with the reason`, async function () {
      cluster = await Cluster.create(row.size, { start: false, env: { QUORUM: row.quorum } });
      const node = cluster.node(1);
      node.spawn();
      const exit = await node.waitForExit();
      expect(exit.code).to.be.a('number').and.not.equal(0);
      expect(node.logTail()).to.match(row.message);
    });
  }

  it('starts with QUORUM=2 of 3 nodes and reports it in /health', async function () {
    cluster = await Cluster.create(3, { start: false, env: { QUORUM: '2' } });
    await cluster.node(1).start();
    const health = await cluster.node(1).health();
    expect(health.body).to.include({ status: 'ok', quorum: 2, peers: 2 });
  });
});
