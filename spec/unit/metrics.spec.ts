import { expect } from 'chai';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { register as globalRegistry } from 'prom-client';
import { readiness } from '../../lib/http/health.js';
import { NodeMetrics, routeClass, txnOutcome, type NodeView } from '../../lib/base/metrics.js';
import { REQUEST_ID_MAX_CHARS, requestIdFrom } from '../../lib/http/request-id.js';
import type { CoordinatorResult } from '../../lib/core/txn-core.js';

// The node's metrics (lib/base/metrics.ts) fed with recorded events and read back in Prometheus' text
// format; the readiness rule (lib/http/health.ts) and the request-id check (lib/http/request-id.ts).

/** The repository's root, from dist/spec/unit. */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const PEER_B = 'http://127.0.0.1:3002';
const PEER_C = 'http://127.0.0.1:3003';

function view(overrides: Partial<NodeView> = {}): NodeView {
  return {
    serverId: 'node-1',
    url: 'http://127.0.0.1:3001',
    nodes: 3,
    quorum: 2,
    inDoubt: () => 2,
    notConverging: () => 1,
    recovered: () => true,
    ready: () => true,
    repos: () => 7,
    gitProcesses: () => 0,
    gitSlotsInUse: () => 3,
    peers: () => [
      { url: PEER_B, reachable: true },
      { url: PEER_C, reachable: false },
    ],
    ...overrides,
  };
}

/** The value of one sample line of the text format, or undefined when there is none. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found = Object.fromEntries([...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) return Number(match[3]);
  }
  return undefined;
}

/** A request and its response as far as the metrics look at them; `end` finishes, `abort` closes first. */
function exchange(url: string, status: number): { req: http.IncomingMessage; res: http.ServerResponse; end: (bytesWritten?: number) => void; abort: () => void } {
  const socket = { bytesWritten: 100 };
  const req = Object.assign(new EventEmitter(), { url, socket }) as unknown as http.IncomingMessage;
  const res = Object.assign(new EventEmitter(), { statusCode: status, writableFinished: false }) as unknown as http.ServerResponse & { writableFinished: boolean };
  return {
    req,
    res,
    end: (bytesWritten = 0) => {
      socket.bytesWritten += bytesWritten;
      res.writableFinished = true;
      res.emit('close');
    },
    abort: () => res.emit('close'),
  };
}

const committed = (confirmed: string[], final?: boolean): CoordinatorResult => ({
  outcome: 'committed',
  epoch: 1,
  generation: 3,
  confirmed,
  applying: [],
  unanswered: [],
  behind: [],
  ...(final === undefined ? {} : { final }),
});

describe('node metrics', () => {
  it('uses a registry of its own: two nodes in one process do not clash, and the global registry stays empty', async () => {
    const a = new NodeMetrics({ view: view() });
    const b = new NodeMetrics({ view: view({ serverId: 'node-2' }) });
    expect(a.registry).to.not.equal(b.registry);
    expect(sample(await a.text(), 'quorum_git_node_info', { server_id: 'node-1' })).to.equal(1);
    expect(sample(await b.text(), 'quorum_git_node_info', { server_id: 'node-2' })).to.equal(1);
    expect(globalRegistry.getSingleMetric('quorum_git_http_requests_total')).to.equal(undefined);
    expect(globalRegistry.getSingleMetric('process_cpu_user_seconds_total')).to.equal(undefined);
  });

  it('serves the Prometheus text format: HELP and TYPE for every metric, process metrics included', async () => {
    const metrics = new NodeMetrics({ view: view() });
    expect(metrics.contentType).to.match(/^text\/plain; version=0\.0\.4; charset=utf-8$/);
    const text = await metrics.text();
    const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
    const helps = new Set([...text.matchAll(/^# HELP (\S+) /gm)].map((m) => m[1]!));
    expect([...types.keys()].every((name) => helps.has(name))).to.equal(true);
    for (const line of text.split('\n').filter((l) => l !== '' && !l.startsWith('#'))) {
      expect(line).to.match(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+$/);
    }
    expect(types.get('quorum_git_http_requests_total')).to.equal('counter');
    expect(types.get('quorum_git_http_request_duration_seconds')).to.equal('histogram');
    expect(types.get('quorum_git_txns_in_doubt')).to.equal('gauge');
    expect(types.get('process_cpu_user_seconds_total')).to.equal('counter');
    expect(types.get('nodejs_heap_size_used_bytes')).to.equal('gauge');
    // Units last, counters in _total.
    for (const [name, type] of types) {
      if (!name.startsWith('quorum_git_')) continue;
      if (type === 'counter') expect(name).to.match(/_total$/);
      if (type === 'histogram') expect(name).to.match(/_(seconds|bytes)$/);
    }
  });

  it('leaves the process metrics out when told to', async () => {
    const text = await new NodeMetrics({ view: view(), processMetrics: false }).text();
    expect(text).to.not.include('process_cpu_user_seconds_total');
    expect(text).to.include('quorum_git_http_requests_total');
  });

  it('counts requests by route class and status, with a latency histogram, and aborted ones apart', async () => {
    const metrics = new NodeMetrics({ view: view(), processMetrics: false });
    const ok = exchange('/repos', 201);
    metrics.observeRequest(ok.req, ok.res);
    ok.end();
    const health = exchange('/health/ready?x=1', 503);
    metrics.observeRequest(health.req, health.res);
    health.end();
    const gone = exchange('/alice/demo.git/git-upload-pack', 200);
    metrics.observeRequest(gone.req, gone.res);
    gone.abort();
    const text = await metrics.text();
    expect(sample(text, 'quorum_git_http_requests_total', { route: 'api', status: '201' })).to.equal(1);
    expect(sample(text, 'quorum_git_http_requests_total', { route: 'health', status: '503' })).to.equal(1);
    expect(sample(text, 'quorum_git_http_requests_total', { route: 'git', status: 'aborted' })).to.equal(1);
    expect(sample(text, 'quorum_git_http_request_duration_seconds_count', { route: 'api' })).to.equal(1);
    expect(sample(text, 'quorum_git_http_request_duration_seconds_bucket', { route: 'api', le: '+Inf' })).to.equal(1);
  });

  it('counts git RPCs with their bytes both ways, by service and origin', async () => {
    const metrics = new NodeMetrics({ view: view(), processMetrics: false });
    const push = exchange('/alice/demo.git/git-receive-pack', 200);
    metrics.observeGitRpc(push.req, push.res, 'receive-pack', 'proxied');
    push.req.emit('data', Buffer.alloc(300));
    push.req.emit('data', Buffer.alloc(200));
    push.end(40);
    const clone = exchange('/alice/demo.git/git-upload-pack', 200);
    metrics.observeGitRpc(clone.req, clone.res, 'upload-pack', 'replica');
    clone.req.emit('data', Buffer.alloc(50));
    clone.end(12_345);
    const text = await metrics.text();
    expect(sample(text, 'quorum_git_git_rpcs_total', { service: 'receive-pack', origin: 'proxied', outcome: 'ok' })).to.equal(1);
    expect(sample(text, 'quorum_git_git_received_bytes_total', { service: 'receive-pack', origin: 'proxied' })).to.equal(500);
    expect(sample(text, 'quorum_git_git_sent_bytes_total', { service: 'receive-pack', origin: 'proxied' })).to.equal(40);
    expect(sample(text, 'quorum_git_git_sent_bytes_total', { service: 'upload-pack', origin: 'replica' })).to.equal(12_345);
    expect(sample(text, 'quorum_git_git_rpc_duration_seconds_count', { service: 'upload-pack', origin: 'replica' })).to.equal(1);
  });

  it('records transactions by kind and outcome, abort codes, and write quorum failures', async () => {
    const metrics = new NodeMetrics({ view: view(), processMetrics: false });
    await metrics.timeTxn('create', async () => committed(['a', 'b', 'c']));
    await metrics.timeTxn('push', async () => committed(['a']));
    await metrics.timeTxn('delete', async () => committed(['a'], false));
    await metrics.timeTxn('push', async () => ({ outcome: 'aborted', code: 'quorum_unreachable', failed: ['b', 'c'] }));
    await metrics.timeTxn('push', async () => ({ outcome: 'aborted', code: 'ref_conflict', failed: [] }));
    let thrown: unknown;
    await metrics.timeTxn('create', async () => Promise.reject(new Error('disk'))).catch((err) => (thrown = err));
    expect((thrown as Error).message).to.equal('disk');
    const text = await metrics.text();
    expect(sample(text, 'quorum_git_txns_total', { kind: 'create', outcome: 'committed' })).to.equal(1);
    expect(sample(text, 'quorum_git_txns_total', { kind: 'push', outcome: 'not_confirmed' })).to.equal(1);
    expect(sample(text, 'quorum_git_txns_total', { kind: 'delete', outcome: 'in_doubt' })).to.equal(1);
    expect(sample(text, 'quorum_git_txns_total', { kind: 'push', outcome: 'aborted' })).to.equal(2);
    expect(sample(text, 'quorum_git_txns_total', { kind: 'create', outcome: 'error' })).to.equal(1);
    expect(sample(text, 'quorum_git_txn_aborts_total', { kind: 'push', code: 'quorum_unreachable' })).to.equal(1);
    expect(sample(text, 'quorum_git_txn_aborts_total', { kind: 'push', code: 'ref_conflict' })).to.equal(1);
    expect(sample(text, 'quorum_git_quorum_failures_total', { type: 'write' })).to.equal(1);
    expect(sample(text, 'quorum_git_txn_duration_seconds_count', { kind: 'push', outcome: 'aborted' })).to.equal(2);
  });

  it('records the prepare and commit phases the driver reports', async () => {
    const metrics = new NodeMetrics({ view: view() });
    metrics.txnPhaseObserved('push', 'prepare', 120);
    metrics.txnPhaseObserved('push', 'commit', 30);
    const text = await metrics.text();
    expect(sample(text, 'quorum_git_txn_phase_duration_seconds_count', { kind: 'push', phase: 'prepare' })).to.equal(1);
    expect(sample(text, 'quorum_git_txn_phase_duration_seconds_sum', { kind: 'push', phase: 'commit' })).to.equal(0.03);
  });

  it('counts packs shipped to peers by how they went', async () => {
    const metrics = new NodeMetrics({ view: view(), processMetrics: false });
    metrics.packShipped('streamed');
    metrics.packShipped('streamed');
    metrics.packShipped('uploaded');
    const text = await metrics.text();
    expect(sample(text, 'quorum_git_push_pack_shipments_total', { how: 'streamed' })).to.equal(2);
    expect(sample(text, 'quorum_git_push_pack_shipments_total', { how: 'uploaded' })).to.equal(1);
    expect(sample(text, 'quorum_git_push_pack_shipments_total', { how: 'inline' })).to.equal(undefined);
  });

  it('counts error answers by code, a refused read as a read quorum failure', async () => {
    const metrics = new NodeMetrics({ view: view(), processMetrics: false });
    metrics.errorAnswered('read_quorum_unreachable');
    metrics.errorAnswered('repo_not_found');
    const text = await metrics.text();
    expect(sample(text, 'quorum_git_http_errors_total', { code: 'repo_not_found' })).to.equal(1);
    expect(sample(text, 'quorum_git_quorum_failures_total', { type: 'read' })).to.equal(1);
  });

  it('records catch-up and repair runs, heartbeats per peer and replicas behind', async () => {
    const metrics = new NodeMetrics({ view: view(), processMetrics: false });
    metrics.catchUpRun('catch-up', 'moved', 0.2);
    metrics.catchUpRun('repair', 'failed', 0.01);
    metrics.heartbeat(PEER_B, true, 0.002);
    metrics.heartbeat(PEER_C, false, 0);
    metrics.replicasBehind(4);
    const text = await metrics.text();
    expect(sample(text, 'quorum_git_catch_up_runs_total', { mode: 'catch-up', result: 'moved' })).to.equal(1);
    expect(sample(text, 'quorum_git_catch_up_runs_total', { mode: 'repair', result: 'failed' })).to.equal(1);
    expect(sample(text, 'quorum_git_catch_up_duration_seconds_sum', { mode: 'catch-up' })).to.equal(0.2);
    expect(sample(text, 'quorum_git_peer_rtt_seconds_count', { peer: PEER_B })).to.equal(1);
    expect(sample(text, 'quorum_git_peer_rtt_seconds_bucket', { peer: PEER_B, le: '0.0025' })).to.equal(1);
    expect(sample(text, 'quorum_git_peer_heartbeat_failures_total', { peer: PEER_C })).to.equal(1);
    expect(sample(text, 'quorum_git_replicas_behind')).to.equal(4);
  });

  it('reads the node\'s state at every scrape: in doubt, not converging, peers up, readiness', async () => {
    let inDoubt = 2;
    let ready = false;
    const metrics = new NodeMetrics({ view: view({ inDoubt: () => inDoubt, ready: () => ready }), processMetrics: false });
    let text = await metrics.text();
    expect(sample(text, 'quorum_git_txns_in_doubt')).to.equal(2);
    expect(sample(text, 'quorum_git_ready')).to.equal(0);
    expect(sample(text, 'quorum_git_replicas_not_converging')).to.equal(1);
    expect(sample(text, 'quorum_git_peer_up', { peer: PEER_B })).to.equal(1);
    expect(sample(text, 'quorum_git_peer_up', { peer: PEER_C })).to.equal(0);
    expect(sample(text, 'quorum_git_repos')).to.equal(7);
    expect(sample(text, 'quorum_git_git_rpcs_admitted')).to.equal(3);
    expect(sample(text, 'quorum_git_write_quorum')).to.equal(2);
    expect(sample(text, 'quorum_git_cluster_nodes')).to.equal(3);
    inDoubt = 0;
    ready = true;
    text = await metrics.text();
    expect(sample(text, 'quorum_git_txns_in_doubt')).to.equal(0);
    expect(sample(text, 'quorum_git_ready')).to.equal(1);
  });
});

describe('metrics documentation and dashboard', () => {
  /** Metric names as a query or a reader sees them: a histogram as its _bucket, _sum and _count series. */
  async function seriesNames(): Promise<{ ours: string[]; all: Set<string> }> {
    const text = await new NodeMetrics({ view: view() }).text();
    const types = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!] as const);
    return {
      ours: types.map(([name]) => name).filter((name) => name.startsWith('quorum_git_')),
      all: new Set(types.flatMap(([name, type]) => (type === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name]))),
    };
  }

  it('lists every quorum_git_ metric in the README', async () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const { ours } = await seriesNames();
    expect(ours.filter((name) => !readme.includes(`\`${name}\``))).to.deep.equal([]);
  });

  it('charts only metrics that exist, in valid dashboard JSON with a PromQL query per panel', async () => {
    const dashboard = JSON.parse(readFileSync(path.join(ROOT, 'scripts', 'grafana-dashboard.json'), 'utf8')) as { panels: { type: string; targets?: { expr: string }[] }[] };
    const charts = dashboard.panels.filter((p) => p.type !== 'row');
    expect(charts.length).to.be.greaterThan(10);
    const { all } = await seriesNames();
    const used = new Set<string>();
    for (const panel of charts) {
      expect(panel.targets ?? []).to.have.length.greaterThan(0);
      for (const t of panel.targets ?? []) for (const m of t.expr.matchAll(/\b((?:quorum_git|process|nodejs)_[a-z0-9_]+)/g)) used.add(m[1]!);
    }
    expect([...used].filter((name) => !all.has(name))).to.deep.equal([]);
  });
});

describe('route classes and transaction outcomes', () => {
  const classes: [string, string][] = [
    ['/health', 'health'],
    ['/health/live', 'health'],
    ['/metrics', 'metrics'],
    ['/internal/txn/prepare', 'internal'],
    ['/internal/hooks/pre-receive', 'internal'],
    ['/repos', 'api'],
    ['/repos/alice/demo', 'api'],
    ['/alice/demo.git/info/refs?service=git-upload-pack', 'git'],
    ['/alice/demo/git-receive-pack', 'git'],
    ['/favicon.ico', 'other'],
    ['/repository', 'other'],
  ];
  for (const [url, expected] of classes) {
    it(`classes ${url} as ${expected}`, () => expect(routeClass(url)).to.equal(expected));
  }

  it('calls a commit confirmed by fewer than W nodes not_confirmed, and one with no confirmed decision in_doubt', () => {
    expect(txnOutcome(committed(['a', 'b']), 2)).to.equal('committed');
    expect(txnOutcome(committed(['a']), 2)).to.equal('not_confirmed');
    expect(txnOutcome(committed(['a', 'b'], false), 2)).to.equal('in_doubt');
    expect(txnOutcome({ outcome: 'aborted', code: 'repo_busy', failed: [] }, 2)).to.equal('aborted');
  });
});

describe('readiness', () => {
  it('is ready once recovered with a write quorum reachable', () => {
    expect(readiness({ recovered: true, nodesReachable: 2, nodes: 3, quorum: 2 })).to.deep.equal({ ready: true, reasons: [] });
  });

  it('is not ready before recovery, nor without a write quorum, and says why', () => {
    const r = readiness({ recovered: false, nodesReachable: 1, nodes: 3, quorum: 2 });
    expect(r.ready).to.equal(false);
    expect(r.reasons).to.have.length(2);
    expect(r.reasons[1]).to.equal('1 of 3 nodes reachable, a write quorum needs 2');
  });
});

describe('request ids', () => {
  const fresh = (): string => 'generated';
  const kept = ['3f2c9a1e-7b7d-4a51-9d0e-1c2b3a4d5e6f', 'push-42', 'Root=1-abc:def/x+y@z', 'a'.repeat(REQUEST_ID_MAX_CHARS)];
  for (const id of kept) {
    it(`keeps ${JSON.stringify(id.slice(0, 40))}`, () => expect(requestIdFrom(id, fresh)).to.equal(id));
  }
  const replaced: [string, string | string[] | undefined][] = [
    ['no header', undefined],
    ['an empty one', ''],
    ['one too long', 'a'.repeat(REQUEST_ID_MAX_CHARS + 1)],
    ['a line break (header or log injection)', 'abc\r\nx-evil: 1'],
    ['a space', 'a b'],
    ['a quote', 'a"b'],
    ['two headers joined by the server', 'a, b'],
    ['a repeated header as an array', ['a', 'b']],
    ['non-ASCII', 'idé'],
    ['a percent sign', 'a%0d'],
  ];
  for (const [what, value] of replaced) {
    it(`replaces ${what} with a new id`, () => expect(requestIdFrom(value, fresh)).to.equal('generated'));
  }

  it('makes a UUID when it makes one', () => {
    expect(requestIdFrom(undefined)).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  });
});
