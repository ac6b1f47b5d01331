import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import fc from 'fast-check';
import { Cluster, SYNC_INTERVAL_MS, TestNode, eventually, http, pathExists, sleep, specLaunch, withCluster } from '../support/cluster.js';
import { SECRET_HEADER, repoVersion } from '../support/push-helpers.js';

// Peers trust no message blindly (issue 8), on a 3-node cluster. Every message below carries the
// cluster secret, as a peer's would: what stops it is validation (the public API's repo-id validator,
// plausible versions), the sender's identity (a configured peer, the transaction's own coordinator),
// or nothing, and then nothing must change anywhere.

function txnId(label: string): string {
  return `spec-${label}-${randomBytes(4).toString('hex')}`;
}

/** What lies directly in a data dir and in its repos/ (owners): where a traversal would show. */
async function layout(node: TestNode): Promise<{ top: string[]; owners: string[] }> {
  const [top, owners] = await Promise.all([fs.readdir(node.dataDir), fs.readdir(node.reposDir)]);
  return { top: top.filter((e) => e !== 'txn.log.tmp').sort(), owners: owners.sort() };
}

describe('peers trust no message blindly (3-node cluster)', function () {
  let cluster: Cluster;
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;
  withCluster(3, {}, (c) => {
    cluster = c;
    [n1, n2, n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  const prepare = (to: TestNode, from: TestNode, id: string, op: unknown, coordinator = from.url): ReturnType<TestNode['internal']> =>
    to.internal('/internal/txn/prepare', { type: 'prepare', txnId: id, op, coordinator }, from.url);

  it('says at start that it serves anonymously, on loopback only', function () {
    for (const node of cluster.nodes) expect(node.logText(), node.serverId).to.include('no AUTH_FILE: serving anonymously');
  });

  it("refuses a prepare of '../pwn', '..' or no repo id with 400 and creates nothing on any node", async function () {
    const before = await Promise.all(cluster.nodes.map(layout));
    for (const op of [{ kind: 'create', repoId: '../pwn' }, { kind: 'create', repoId: '..' }, { kind: 'create' }, { kind: 'delete', repoId: 'a/../../pwn' }]) {
      const res = await prepare(n1, n2, txnId('pwn'), op);
      expect(res.status, `${JSON.stringify(op)}: ${res.text}`).to.equal(400);
      expect(res.body.error.code).to.be.oneOf(['invalid_repo_id', 'invalid_body']);
    }
    await sleep(3 * SYNC_INTERVAL_MS);
    for (const node of cluster.nodes) {
      expect(await pathExists(path.join(node.dataDir, 'pwn.git')), node.serverId).to.equal(false);
      expect(await pathExists(path.join(node.dataDir, 'undefined.git')), node.serverId).to.equal(false);
    }
    expect(await Promise.all(cluster.nodes.map(layout))).to.deep.equal(before);
  });

  it('takes 2PC messages only from a configured peer that names itself as coordinator', async function () {
    const op = { kind: 'create', repoId: 'peers/stranger' };
    const body = { type: 'prepare', txnId: txnId('stranger'), op, coordinator: n2.url };
    const noSender = await http(`${n1.url}/internal/txn/prepare`, { headers: { [SECRET_HEADER]: cluster.secret }, json: body });
    expect(noSender.status, noSender.text).to.equal(403);
    expect(noSender.body.error.code).to.equal('unknown_peer');
    const stranger = await n1.internal('/internal/txn/prepare', body, 'http://10.6.6.6:3001');
    expect(stranger.status, stranger.text).to.equal(403);
    expect(stranger.body.error.code).to.equal('unknown_peer');
    const impostor = await prepare(n1, n3, txnId('impostor'), op, n2.url);
    expect(impostor.status, impostor.text).to.equal(403);
    expect(impostor.body.error.code).to.equal('not_coordinator');
    expect((await n1.getRepo('peers/stranger')).status).to.equal(404);
  });

  it('takes a commit or abort of a prepared transaction only from its coordinator', async function () {
    const id = txnId('bound');
    const repoId = 'peers/bound';
    expect((await prepare(n1, n2, id, { kind: 'create', repoId })).body).to.include({ vote: 'yes' });
    for (const [step, msg] of [
      ['commit', { type: 'commitTxn', txnId: id, epoch: 1, generation: 0, final: true }],
      ['abort', { type: 'abortTxn', txnId: id }],
    ] as const) {
      const res = await n1.internal(`/internal/txn/${step}`, msg, n3.url);
      expect(res.status, `${step} from node 3: ${res.text}`).to.equal(403);
      expect(res.body.error.code).to.equal('not_coordinator');
    }
    // Node 1 may have asked node 2 about it meanwhile (recovery: node 2 never ran it, so abort).
    const state = await n1.internal(`/internal/txn/${id}`);
    expect(state.body.outcome).to.be.oneOf(['prepared', 'aborted']);
    expect((await n1.internal('/internal/txn/abort', { type: 'abortTxn', txnId: id }, n2.url)).status).to.equal(200);
    expect((await n1.internal(`/internal/txn/${id}`)).body.outcome).to.equal('aborted');
    expect(await pathExists(n1.repoDir(repoId))).to.equal(false);
  });

  it('refuses a forged delete at epoch 99; recovery aborts it and no node loses the repo', async function () {
    const repoId = 'peers/victim';
    expect((await n1.createRepo(repoId)).status).to.equal(201);
    await eventually(async () => {
      for (const node of cluster.nodes) expect(await repoVersion(node, repoId), node.serverId).to.include({ live: true, epoch: 1 });
    });
    const id = txnId('forged-delete');
    expect((await prepare(n1, n2, id, { kind: 'delete', repoId })).body).to.include({ vote: 'yes' });
    const commit = await n1.internal('/internal/txn/commit', { type: 'commitTxn', txnId: id, epoch: 99, generation: 0, final: true }, n2.url);
    expect(commit.status, commit.text).to.equal(400);
    expect(commit.body.error.message).to.match(/not plausible/);
    // The named coordinator (node 2) never ran it: node 1 learns the abort from it and lets the repo go.
    await eventually(async () => expect((await n1.internal(`/internal/txn/${id}`)).body.outcome).to.equal('aborted'), 15_000);
    await sleep(5 * SYNC_INTERVAL_MS);
    for (const node of cluster.nodes) {
      expect(await repoVersion(node, repoId), node.serverId).to.include({ live: true, epoch: 1 });
      expect(await pathExists(node.repoDir(repoId)), node.serverId).to.equal(true);
      expect((await node.getRepo(repoId)).body, node.serverId).to.include({ exists: true, epoch: 1 });
    }
  });

  it('keeps a pack streamed ahead only if it ends in its own checksum, and gives it up only under that name', async function () {
    const put = (pathname: string, body: Uint8Array, headers: Record<string, string> = {}): ReturnType<typeof http> =>
      http(`${n1.url}${pathname}`, { method: 'PUT', body, headers: { [SECRET_HEADER]: cluster.secret, 'x-quorum-node': n2.url, ...headers } });
    const stageId = (): string => `stage-${randomBytes(12).toString('hex')}`;
    const incoming = path.join(n1.dataDir, 'incoming');
    const content = Buffer.concat([Buffer.from('PACK'), Buffer.from([0, 0, 0, 2, 0, 0, 0, 0]), randomBytes(4096)]);
    const checksum = createHash('sha1').update(content).digest();
    const pack = Buffer.concat([content, checksum]);
    const name = `pack-${checksum.toString('hex')}.pack`;

    // A stream that does not end in its checksum (a byte changed on the way, or cut short) is not kept.
    const broken = Buffer.from(pack);
    broken[100] = broken[100]! ^ 1;
    for (const body of [broken, pack.subarray(0, 2000)]) {
      const id = stageId();
      const res = await put(`/internal/stage/${id}`, body);
      expect(res.status, res.text).to.equal(400);
      expect(res.body.error.code).to.equal('invalid_body');
      expect(await pathExists(path.join(incoming, id)), 'nothing kept').to.equal(false);
    }
    // Not a stage's name: no such route.
    expect((await put('/internal/stage/..', pack)).status).to.equal(404);
    expect((await put('/internal/stage/stage-x', pack)).status).to.equal(404);

    const id = stageId();
    expect((await put(`/internal/stage/${id}`, pack)).status).to.equal(204);
    const txn = txnId('adopt');
    // Asked for under another name, for an index, or for a stage that is not there: not given up.
    const other = `pack-${'e'.repeat(40)}.pack`;
    const wrongName = await put(`/internal/push/${txn}/${other}`, new Uint8Array(0), { 'x-quorum-staged-pack': id });
    expect(wrongName.status, wrongName.text).to.equal(404);
    expect(wrongName.body.error.code).to.equal('not_found');
    const idx = await put(`/internal/push/${txn}/${name.replace(/\.pack$/, '.idx')}`, new Uint8Array(0), { 'x-quorum-staged-pack': id });
    expect(idx.status, idx.text).to.equal(400);
    const notStaged = await put(`/internal/push/${txn}/${name}`, new Uint8Array(0), { 'x-quorum-staged-pack': stageId() });
    expect(notStaged.status, notStaged.text).to.equal(404);
    const badId = await put(`/internal/push/${txn}/${name}`, new Uint8Array(0), { 'x-quorum-staged-pack': '../../repos' });
    expect(badId.status, badId.text).to.equal(400);
    expect(await pathExists(path.join(incoming, txn, other))).to.equal(false);

    const adopted = await put(`/internal/push/${txn}/${name}`, new Uint8Array(0), { 'x-quorum-staged-pack': id });
    expect(adopted.status, adopted.text).to.equal(204);
    expect((await fs.readFile(path.join(incoming, txn, name))).equals(pack), 'the very bytes streamed').to.equal(true);
    expect(await pathExists(path.join(incoming, id)), 'the stage is gone').to.equal(false);
    // A stage the push did not take is dropped when its coordinator says so.
    const dropped = stageId();
    expect((await put(`/internal/stage/${dropped}`, pack)).status).to.equal(204);
    expect(await pathExists(path.join(incoming, dropped))).to.equal(true);
    const drop = await http(`${n1.url}/internal/stage/${dropped}`, { method: 'DELETE', headers: { [SECRET_HEADER]: cluster.secret, 'x-quorum-node': n2.url } });
    expect(drop.status, drop.text).to.equal(204);
    expect(await pathExists(path.join(incoming, dropped))).to.equal(false);
    // No prepare follows: the upload is dropped as abandoned, as any other.
    await eventually(async () => expect(await pathExists(path.join(incoming, txn))).to.equal(false), 30_000);
  });

  it('answers random internal messages with a 2xx or 4xx, never a 5xx, and stays up with nothing outside its dirs', async function () {
    const before = await layout(n1);
    const id = fc.oneof(fc.constantFrom('a/b', '../pwn', '..', 'peers/x', 'internal/x', ''), fc.string({ maxLength: 20 }), fc.anything());
    const num = fc.oneof(fc.nat({ max: 3 }), fc.constantFrom(-1, 1.5, 2 ** 53, 1e308), fc.string({ maxLength: 3 }));
    const body = fc.oneof(
      fc.record({ type: fc.constant('prepare'), txnId: fc.oneof(fc.constant(txnId('fuzz')), fc.string({ maxLength: 8 })), op: fc.record({ kind: fc.constantFrom('create', 'delete', 'push'), repoId: id }), coordinator: fc.constant(n2.url) }),
      fc.record({ type: fc.constantFrom('commitTxn', 'abortTxn'), txnId: fc.oneof(fc.constant(txnId('fuzz')), fc.string({ maxLength: 8 })), epoch: num, generation: num }),
      fc.jsonValue({ maxDepth: 3 }),
    );
    const statuses = new Set<number>();
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('prepare', 'commit', 'abort'), body, async (step, json) => {
        const res = await n1.internal(`/internal/txn/${step}`, json === undefined ? null : json, n2.url);
        statuses.add(res.status);
        expect(res.status, res.text).to.be.below(500);
      }),
      { numRuns: 40 },
    );
    expect([...statuses].some((s) => s >= 400), 'some were refused').to.equal(true);
    expect((await n1.health()).status).to.equal(200);
    expect(await layout(n1)).to.deep.equal(before);
  });
});

describe('secure defaults at start (a real node process)', function () {
  let root: string;
  before(async () => {
    root = await fs.mkdtemp(path.join((await import('node:os')).tmpdir(), 'quorum-git-spec-defaults-'));
  });
  after(() => fs.rm(root, { recursive: true, force: true }));

  const node = (env: Record<string, string>): TestNode =>
    new TestNode({ index: 0, serverId: 'exposed', host: '127.0.0.1', launch: specLaunch(), port: 1, dataDir: path.join(root, 'data'), logFile: path.join(root, 'exposed.log'), env: { SERVER_ID: 'exposed', DATA_DIR: path.join(root, 'data'), PORT: '3999', ...env } });

  it('refuses to start on 0.0.0.0 without a real secret or AUTH_FILE, saying what to set, with a non-zero exit', async function () {
    const exposed = node({ HOST: '0.0.0.0', PEER_URLS: 'http://10.0.0.2:3001', CLUSTER_SECRET: '', AUTH_FILE: '' });
    exposed.spawn();
    const exit = await exposed.waitForExit();
    expect(exit.code).to.equal(2);
    expect(exposed.logText()).to.match(/CLUSTER_SECRET is not set/).and.match(/AUTH_FILE is not set/);
    expect(await pathExists(path.join(root, 'data')), 'nothing written').to.equal(false);
  });
});
