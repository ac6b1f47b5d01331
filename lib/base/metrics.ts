import { systemClock, type Clock } from './clock.js';
import type http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { CoordinatorResult, TxnOp } from '../core/txn-core.js';

// Prometheus metrics of one node, served at GET /metrics in the text format. Every node has its own
// Registry (never prom-client's global one), so several nodes in one process do not clash. Names
// follow Prometheus' conventions: the `quorum_git_` prefix, base units last (`_seconds`, `_bytes`),
// counters end in `_total`. Label values come from small fixed sets (route classes, services, txn
// kinds, outcomes, error codes, the configured peer URLs), never from client input, so a client
// cannot grow the number of series. The README's "Metrics" section lists them all and
// scripts/grafana-dashboard.json charts them.
//
// Counters and histograms are recorded where things happen (the HTTP layer, the git gateway, the
// push service and the management API around each runTxn, the catch-up loop, the heartbeat);
// state that the node already holds (transactions in doubt, replicas not converging, peers up,
// readiness) is read at scrape time through NodeView, so nothing has to keep it in step.

/** The class of a request, by its path: the label of the HTTP metrics. */
export type RouteClass = 'api' | 'git' | 'internal' | 'health' | 'metrics' | 'other';

/** Who a git RPC was served for: a client, a client through another node, or a peer catching up. */
export type GitOrigin = 'client' | 'proxied' | 'replica';

export type GitService = 'upload-pack' | 'receive-pack';

export type TxnKind = TxnOp['kind'];

/** `committed` (on a quorum), `not_confirmed` (decided, fewer than W applied it in time), `in_doubt` (no other node confirmed the decision), `aborted`, `error` (threw). */
export type TxnOutcome = 'committed' | 'not_confirmed' | 'in_doubt' | 'aborted' | 'error';

export type CatchUpMode = 'catch-up' | 'repair';

/**
 * How a push's pack reached a peer: inside the prepare (a small pack), taken from the stream sent
 * while the client was still pushing (lib/cluster/pack-tee.ts), or uploaded after receive-pack
 * indexed it (the stream's fallback: a thin pack completed with bases, a cut stream, a slow peer).
 */
export type PackShipment = 'inline' | 'streamed' | 'uploaded';

/** What a catch-up or repair run came to (lib/cluster/catch-up.ts). */
export type CatchUpResult = 'moved' | 'current' | 'agreed' | 'skipped' | 'not-mine' | 'failed';

/** What the node knows about itself, read at each scrape. */
export interface NodeView {
  serverId: string;
  url: string;
  nodes: number;
  quorum: number;
  inDoubt(): number;
  notConverging(): number;
  recovered(): boolean;
  ready(): boolean;
  repos(): number;
  gitProcesses(): number;
  gitSlotsInUse(): number;
  peers(): Iterable<{ url: string; reachable: boolean }>;
}

export interface NodeMetricsOptions {
  view: NodeView;
  /** prom-client's process and Node.js metrics (CPU, memory, event loop, GC, handles); default on. */
  processMetrics?: boolean;
  /** The node's clock (default the system's): every duration is measured on it. */
  clock?: Clock;
}

/** Runs one transaction and records its kind, outcome and duration. */
export type TxnTimer = (kind: TxnKind, run: () => Promise<CoordinatorResult>) => Promise<CoordinatorResult>;

const HTTP_BUCKETS_S = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const GIT_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];
const TXN_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120];
const CATCH_UP_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600];
const RTT_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** The class of a request by its path alone, so a request the router refuses is still counted. */
export function routeClass(rawUrl: string): RouteClass {
  const queryAt = rawUrl.indexOf('?');
  const path = queryAt === -1 ? rawUrl : rawUrl.slice(0, queryAt);
  if (path === '/health' || path.startsWith('/health/')) return 'health';
  if (path === '/metrics' || path === '/metrics/') return 'metrics';
  if (path.startsWith('/internal/')) return 'internal';
  if (path === '/repos' || path.startsWith('/repos/')) return 'api';
  if (path.endsWith('/info/refs') || path.endsWith('/git-upload-pack') || path.endsWith('/git-receive-pack')) return 'git';
  return 'other';
}

/** The outcome label of a coordinator's result; `quorum` is W. */
export function txnOutcome(result: CoordinatorResult, quorum: number): TxnOutcome {
  if (result.outcome === 'aborted') return 'aborted';
  if (result.final === false) return 'in_doubt';
  return result.confirmed.length < quorum ? 'not_confirmed' : 'committed';
}

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly quorum: number;

  private readonly httpRequests: Counter<'route' | 'status'>;
  private readonly httpDuration: Histogram<'route'>;
  private readonly errors: Counter<'code'>;
  private readonly gitRpcs: Counter<'service' | 'origin' | 'outcome'>;
  private readonly gitDuration: Histogram<'service' | 'origin'>;
  private readonly gitReceived: Counter<'service' | 'origin'>;
  private readonly gitSent: Counter<'service' | 'origin'>;
  private readonly txns: Counter<'kind' | 'outcome'>;
  private readonly txnDuration: Histogram<'kind' | 'outcome'>;
  private readonly txnAborts: Counter<'kind' | 'code'>;
  private readonly txnPhase: Histogram<'kind' | 'phase'>;
  private readonly packShipments: Counter<'how'>;
  private readonly quorumFailures: Counter<'type'>;
  private readonly catchUps: Counter<'mode' | 'result'>;
  private readonly catchUpDuration: Histogram<'mode'>;
  private readonly peerRtt: Histogram<'peer'>;
  private readonly peerFailures: Counter<'peer'>;
  private readonly behind: Gauge;

  private readonly clock: Clock;

  constructor(options: NodeMetricsOptions) {
    const { view } = options;
    this.clock = options.clock ?? systemClock;
    const registers = [this.registry];
    this.quorum = view.quorum;
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });

    this.httpRequests = new Counter({
      name: 'quorum_git_http_requests_total',
      help: 'HTTP requests answered, by route class (api, git, internal, health, metrics, other) and status code ("aborted" when the connection closed first).',
      labelNames: ['route', 'status'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'quorum_git_http_request_duration_seconds',
      help: 'Time from a request\'s arrival until its response ended, by route class.',
      labelNames: ['route'],
      buckets: HTTP_BUCKETS_S,
      registers,
    });
    this.errors = new Counter({
      name: 'quorum_git_http_errors_total',
      help: 'Error answers by error code (lib/core/errors.ts).',
      labelNames: ['code'],
      registers,
    });
    this.gitRpcs = new Counter({
      name: 'quorum_git_git_rpcs_total',
      help: 'Git RPCs served from this node\'s copy: upload-pack (clone, fetch) and receive-pack (push), by origin (client, proxied: for a client through another node, replica: a peer catching up) and outcome (ok, error, aborted).',
      labelNames: ['service', 'origin', 'outcome'],
      registers,
    });
    this.gitDuration = new Histogram({
      name: 'quorum_git_git_rpc_duration_seconds',
      help: 'Duration of git RPCs served from this node\'s copy.',
      labelNames: ['service', 'origin'],
      buckets: GIT_BUCKETS_S,
      registers,
    });
    this.gitReceived = new Counter({
      name: 'quorum_git_git_received_bytes_total',
      help: 'Request body bytes of git RPCs as sent on the wire (a push\'s pack, a fetch\'s wants and haves).',
      labelNames: ['service', 'origin'],
      registers,
    });
    this.gitSent = new Counter({
      name: 'quorum_git_git_sent_bytes_total',
      help: 'Response bytes of git RPCs on the wire, headers included (a clone\'s or fetch\'s pack; origin="replica" is catch-up and repair traffic).',
      labelNames: ['service', 'origin'],
      registers,
    });
    this.txns = new Counter({
      name: 'quorum_git_txns_total',
      help: 'Transactions this node coordinated, by kind (create, delete, push) and outcome (committed, not_confirmed, in_doubt, aborted, error).',
      labelNames: ['kind', 'outcome'],
      registers,
    });
    this.txnDuration = new Histogram({
      name: 'quorum_git_txn_duration_seconds',
      help: 'Duration of transactions this node coordinated, from start to the answer (a push\'s pack shipping included).',
      labelNames: ['kind', 'outcome'],
      buckets: TXN_BUCKETS_S,
      registers,
    });
    this.txnPhase = new Histogram({
      name: 'quorum_git_txn_phase_duration_seconds',
      help: 'Phases of transactions this node coordinated: prepare (start to the logged decision: votes, staging and the prepare fsyncs) and commit (decision to the answer: commit messages, applies and acknowledgements).',
      labelNames: ['kind', 'phase'],
      buckets: TXN_BUCKETS_S,
      registers,
    });
    this.packShipments = new Counter({
      name: 'quorum_git_push_pack_shipments_total',
      help: 'A push\'s pack shipped to one peer, by how: inline (inside the prepare), streamed (taken from the stream sent while the client pushed), uploaded (after receive-pack indexed it).',
      labelNames: ['how'],
      registers,
    });
    this.txnAborts = new Counter({
      name: 'quorum_git_txn_aborts_total',
      help: 'Aborted transactions by kind and abort code (quorum_unreachable, repo_busy, ref_conflict, stale, ...).',
      labelNames: ['kind', 'code'],
      registers,
    });
    this.quorumFailures = new Counter({
      name: 'quorum_git_quorum_failures_total',
      help: 'Writes aborted for want of a write quorum (type="write") and reads refused for want of a read quorum (type="read").',
      labelNames: ['type'],
      registers,
    });
    this.catchUps = new Counter({
      name: 'quorum_git_catch_up_runs_total',
      help: 'Catch-up runs (a replica behind fetching from a newer peer) and repair checks (refs digest compared with the peers\'), by result: moved (refs copied), current, agreed, skipped, not-mine, failed.',
      labelNames: ['mode', 'result'],
      registers,
    });
    this.catchUpDuration = new Histogram({
      name: 'quorum_git_catch_up_duration_seconds',
      help: 'Duration of catch-up runs and repair checks.',
      labelNames: ['mode'],
      buckets: CATCH_UP_BUCKETS_S,
      registers,
    });
    this.peerRtt = new Histogram({
      name: 'quorum_git_peer_rtt_seconds',
      help: 'Round-trip time of the heartbeat to each peer (answered pings only).',
      labelNames: ['peer'],
      buckets: RTT_BUCKETS_S,
      registers,
    });
    this.peerFailures = new Counter({
      name: 'quorum_git_peer_heartbeat_failures_total',
      help: 'Heartbeats a peer did not answer in time.',
      labelNames: ['peer'],
      registers,
    });
    this.behind = new Gauge({
      name: 'quorum_git_replicas_behind',
      help: 'Replicas here found behind a peer in the last sync round (each is then caught up).',
      registers,
    });

    // Read at scrape time.
    const peerUp = new Gauge({
      name: 'quorum_git_peer_up',
      help: '1 if the peer answered its last heartbeat, else 0.',
      labelNames: ['peer'],
      registers,
      collect() {
        for (const p of view.peers()) peerUp.set({ peer: p.url }, p.reachable ? 1 : 0);
      },
    });
    const scraped = (name: string, help: string, read: () => number): void => {
      const gauge: Gauge = new Gauge({ name, help, registers, collect: () => gauge.set(read()) });
    };
    scraped('quorum_git_txns_in_doubt', 'Transactions prepared here whose outcome this node does not know yet.', () => view.inDoubt());
    scraped('quorum_git_replicas_not_converging', 'Replicas here whose catch-up or repair failed several rounds in a row (GET /health replicas_not_converging).', () => view.notConverging());
    scraped('quorum_git_recovered', '1 once the first recovery round since start (in-doubt resolution, catalog sync) has run.', () => (view.recovered() ? 1 : 0));
    scraped('quorum_git_ready', '1 when GET /health/ready answers 200: recovered and a write quorum of nodes reachable.', () => (view.ready() ? 1 : 0));
    scraped('quorum_git_repos', 'Live repositories in this node\'s catalog.', () => view.repos());
    scraped('quorum_git_git_processes', 'Git RPC processes serving requests now (capped by MAX_GIT_PROCESSES).', () => view.gitProcesses());
    scraped('quorum_git_git_rpcs_admitted', 'Git RPC requests holding a place under MAX_GIT_PROCESSES now: running git, or admitted and waiting for their body.', () => view.gitSlotsInUse());
    new Gauge({ name: 'quorum_git_cluster_nodes', help: 'Nodes in the cluster as this node is configured.', registers }).set(view.nodes);
    new Gauge({ name: 'quorum_git_write_quorum', help: 'The write quorum W.', registers }).set(view.quorum);
    new Gauge({ name: 'quorum_git_node_info', help: 'This node\'s identity; always 1.', labelNames: ['server_id', 'url'], registers }).set({ server_id: view.serverId, url: view.url }, 1);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The registry in Prometheus' text format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Answers GET /metrics. */
  async respond(res: http.ServerResponse): Promise<void> {
    const text = await this.text();
    res.writeHead(200, { 'content-type': this.contentType, 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  /** Counts a request and its duration once its response is over (or its connection gone). */
  observeRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const started = this.clock.now();
    res.once('close', () => {
      const route = routeClass(req.url ?? '/');
      this.httpRequests.inc({ route, status: res.writableFinished ? String(res.statusCode) : 'aborted' });
      this.httpDuration.observe({ route }, this.secondsSince(started));
    });
  }

  /**
   * Counts a git RPC served from this node's copy, its duration and its bytes both ways. Call it
   * right before the RPC starts reading the body (same tick): it listens to the body's chunks.
   */
  observeGitRpc(req: http.IncomingMessage, res: http.ServerResponse, service: GitService, origin: GitOrigin): void {
    const started = this.clock.now();
    const socket = req.socket;
    const writtenBefore = socket.bytesWritten;
    let received = 0;
    req.on('data', (chunk: Buffer) => {
      received += chunk.length;
    });
    res.once('close', () => {
      const labels = { service, origin };
      const outcome = !res.writableFinished ? 'aborted' : res.statusCode >= 400 ? 'error' : 'ok';
      this.gitRpcs.inc({ ...labels, outcome });
      this.gitDuration.observe(labels, this.secondsSince(started));
      this.gitReceived.inc(labels, received);
      this.gitSent.inc(labels, Math.max(0, socket.bytesWritten - writtenBefore));
    });
  }

  /** Error answers by code; a refused read also counts as a read quorum failure. */
  errorAnswered(code: string): void {
    this.errors.inc({ code });
    if (code === 'read_quorum_unreachable') this.quorumFailures.inc({ type: 'read' });
  }

  private secondsSince(startedMs: number): number {
    return (this.clock.now() - startedMs) / 1000;
  }

  /** One phase of a coordinated transaction (TxnDriver's observePhase). */
  txnPhaseObserved(kind: TxnKind, phase: 'prepare' | 'commit', ms: number): void {
    this.txnPhase.observe({ kind, phase }, ms / 1000);
  }

  /** Runs one coordinated transaction (TxnDriver.runTxn) and records it. */
  readonly timeTxn: TxnTimer = async (kind, run) => {
    const started = this.clock.now();
    let outcome: TxnOutcome = 'error';
    try {
      const result = await run();
      outcome = txnOutcome(result, this.quorum);
      if (result.outcome === 'aborted') {
        this.txnAborts.inc({ kind, code: result.code });
        if (result.code === 'quorum_unreachable') this.quorumFailures.inc({ type: 'write' });
      }
      return result;
    } finally {
      this.txns.inc({ kind, outcome });
      this.txnDuration.observe({ kind, outcome }, this.secondsSince(started));
    }
  };

  /** A push's pack shipped to one peer. */
  packShipped(how: PackShipment): void {
    this.packShipments.inc({ how });
  }

  catchUpRun(mode: CatchUpMode, result: CatchUpResult, seconds: number): void {
    this.catchUps.inc({ mode, result });
    this.catchUpDuration.observe({ mode }, seconds);
  }

  /** One heartbeat to `peer`: its round trip when answered, a failure when not. */
  heartbeat(peer: string, answered: boolean, seconds: number): void {
    if (answered) this.peerRtt.observe({ peer }, seconds);
    else this.peerFailures.inc({ peer });
  }

  replicasBehind(count: number): void {
    this.behind.set(count);
  }
}
