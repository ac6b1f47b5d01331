import { createHash, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import type { Config } from './base/config.js';
import { QuorumGitError, errorBody, isQuorumGitError, statusByCode } from './core/errors.js';
import { GitHttp } from './http/git-http.js';
import { PKT_MAX_BYTES, clientAddress } from './http/git-rpc.js';
import type { Logger } from './base/logger.js';
import { commitEpochProblem, parseTxnMessage } from './cluster/internal-messages.js';
import { KEEP_ALIVE_TIMEOUT_MS, NODE_HEADER, PeerClient, peerAgent, peerHttpsAgent } from './cluster/peer-client.js';
import { REQUEST_ID_HEADER, SECRET_HEADER } from './base/headers.js';
import { parseRepoId } from './core/repo-id.js';
import { RepoStore } from './storage/repo-store.js';
import { GitReplica } from './storage/replica.js';
import { route, type Route } from './http/router.js';
import { compareVersions, type NodeId, type TxnMessage, type TxnOp } from './core/txn-core.js';
import { sleep, systemClock, type Clock } from './base/clock.js';
import { TxnDriver } from './cluster/txn-driver.js';
import { TxnLog } from './storage/txn-log.js';
import { createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createProxyServer, type ProxyServer } from 'http-proxy-3';
import { CATCH_UP_HEADER, CatchUp, DIRECT_HEADER, repoDigest } from './cluster/catch-up.js';
import { readiness, type Readiness } from './http/health.js';
import { NodeMetrics } from './base/metrics.js';
import { requestIdFrom } from './http/request-id.js';
import { PACK_FILE } from './git/git-refs.js';
import { applyGitEnvironment, installHooks } from './git/hooks.js';
import { isLoopbackHost } from './base/config.js';
import { Maintenance } from './git/maintenance.js';
import { PushService } from './cluster/push-service.js';
import { readQuorum } from './core/quorum.js';
import { pickCoordinator, planRead, type ReadPlan, type ReplicaAnswer } from './core/routing.js';
import { mergeCatalogs, newestSettings, type CatalogAnswer } from './core/catalog-merge.js';
import { applySettingsChange, DEFAULT_REPO_SETTINGS, settingsView, type RepoSettings } from './core/repo-settings.js';
import { UserDirectory } from './http/auth.js';
import { decideRepo, Gate, type Caller, type RepoAccess, type RequestContext } from './http/authz.js';
import { auditPush, auditRepoChange, auditUpdates, type AuditWho } from './http/audit.js';

// One node: the HTTP server that wires router, management API, internal API and git together, and
// the background loops (peer heartbeat, recovery of in-doubt transactions, anti-entropy).

const BUSY_RETRIES = 3;
/** Repos whose refs digest is compared with the peers' in each anti-entropy round. */
const VERIFY_PER_ROUND = 8;
/** Packs up to this size ride inside the prepare message (saves a request per peer on small pushes). */
const INLINE_PACK_MAX_BYTES = 512 * 1024;
const BUSY_BACKOFF_MS = 15;
/**
 * Set (with the cluster secret) on a client's request one node proxies to another: the receiving
 * node authorizes the client's own credentials again. A peer's request without it (catch-up's fetch)
 * is the cluster's own and the secret authorizes it.
 */
export const PROXIED_HEADER = 'x-quorum-proxied';

interface PeerStatus {
  url: string;
  server_id: string | null;
  reachable: boolean;
  last_seen: string | null;
}

export class QuorumGitNode {
  readonly config: Config;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly store: RepoStore;
  private readonly client: PeerClient;
  private readonly driver: TxnDriver;
  private readonly txnLog: TxnLog;
  private readonly gitHttp: GitHttp;
  private readonly pushService: PushService;
  private readonly catchUpper: CatchUp;
  private readonly maintenance: Maintenance;
  private readonly metrics: NodeMetrics;
  private readonly proxy: ProxyServer;
  private readonly proxyAgent = peerAgent(256);
  private readonly proxyHttpsAgent: https.Agent;
  private readonly server: http.Server;
  /**
   * With TLS, the pre-receive hook (bash over /dev/tcp, no TLS) reaches its node on this plain
   * listener, bound to loopback on a port of its own and serving the hook's route only.
   */
  private readonly hookServer: http.Server | undefined;
  private readonly peers = new Map<NodeId, PeerStatus>();
  /** The background loops' next timers (see every()), cleared by stop(). */
  private readonly loops: { timer?: unknown }[] = [];
  private cpuSample = os.cpus().map((c) => c.times);
  private cpuPercent = 0;
  /** Background tasks in flight, awaited by stop(). */
  private readonly background = new Set<Promise<unknown>>();
  private stopping = false;
  /** The first recovery round since start (in-doubt resolution, catalog sync) has run; for `status`. */
  private recovered = false;
  private verifyCursor = 0;
  /** The users file, with AUTH_FILE; read at start. */
  private users: UserDirectory | undefined;
  private gate = new Gate({ users: undefined, repoAccess: (repoId) => this.repoAccess(repoId) });
  /** Who sent each request being served, for the handlers after the router (and the audit log). */
  private readonly callers = new WeakMap<http.IncomingMessage, { caller: Caller; ctx: RequestContext }>();

  constructor(config: Config, logger: Logger, clock: Clock = systemClock) {
    this.config = config;
    this.logger = logger;
    this.clock = clock;
    this.store = new RepoStore(config.dataDir, { clock });
    this.maintenance = new Maintenance({ repoPath: (repoId) => this.store.repoPath(repoId), logger, delayMs: config.gcDelayMs, clock });
    this.txnLog = new TxnLog(config.dataDir);
    this.client = new PeerClient({
      secret: config.clusterSecret,
      requestTimeoutMs: config.peerTimeoutMs,
      clock,
      self: config.selfUrl,
      logger,
      ...(config.tlsCa ? { ca: config.tlsCa } : {}),
    });
    this.driver = new TxnDriver({
      self: config.selfUrl,
      peers: config.peerUrls,
      quorum: config.quorum,
      log: this.txnLog,
      replica: new GitReplica(this.store, logger, clock),
      transport: this.client,
      logger,
      clock,
      newTxnId: () => this.newTxnId(),
      afterWrite: (repoId) => this.maintenance.touched(repoId),
      observePhase: (kind, phase, ms) => this.metrics.txnPhaseObserved(kind, phase, ms),
      timeouts: { prepareTimeoutMs: config.prepareTimeoutMs, commitTimeoutMs: config.commitTimeoutMs, commitResends: config.commitResends },
    });
    this.gitHttp = new GitHttp((repoId) => this.store.repoPath(repoId), logger, {
      // A push's commands: the same bound per ref as the hook's input, plus one pkt-line of slack.
      maxHeadBytes: config.maxRefsPerPush * 300 + PKT_MAX_BYTES,
      bodyIdleTimeoutMs: config.gitBodyIdleTimeoutMs,
      maxProcesses: config.maxGitProcesses,
      maxProcessesPerClient: config.maxGitProcessesPerClient,
    }, clock);
    this.pushService = new PushService({
      driver: this.driver,
      store: this.store,
      client: this.client,
      logger,
      quorum: config.quorum,
      limits: { maxRefsPerPush: config.maxRefsPerPush, inlinePackMaxBytes: INLINE_PACK_MAX_BYTES, pushLockTimeoutMs: config.pushLockTimeoutMs, localApplyTimeoutMs: config.commitTimeoutMs * 10 },
      newTxnId: () => this.newTxnId(),
      receivePackExit: (pid) => this.gitHttp.receivePackExit(pid),
      timeTxn: (kind, run) => this.metrics.timeTxn(kind, run),
      clock,
    });
    this.catchUpper = new CatchUp({
      driver: this.driver,
      store: this.store,
      client: this.client,
      logger,
      peers: config.peerUrls,
      secret: config.clusterSecret,
      timeoutMs: config.catchUpTimeoutMs,
      observe: (mode, result, seconds) => this.metrics.catchUpRun(mode, result, seconds),
      clock,
    });
    this.metrics = new NodeMetrics({
      clock,
      view: {
        serverId: config.serverId,
        url: config.selfUrl,
        nodes: this.driver.nodes.length,
        quorum: config.quorum,
        inDoubt: () => this.driver.participant.inDoubt().length,
        notConverging: () => this.catchUpper.notConverging().length,
        recovered: () => this.recovered,
        ready: () => this.readiness().ready,
        repos: () => this.driver.participant.liveRepos().length,
        gitProcesses: () => this.gitHttp.activeProcesses,
        peers: () => this.peers.values(),
      },
    });
    // Streams both ways without buffering; no timeout of its own (a long clone is not an error).
    this.proxy = createProxyServer({ agent: this.proxyAgent, xfwd: true });
    this.proxyHttpsAgent = peerHttpsAgent(256, config.tlsCa);
    for (const url of config.peerUrls) this.peers.set(url, { url, server_id: null, reachable: false, last_seen: null });
    const serverOptions = { requestTimeout: 0, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS };
    this.server = config.tls
      ? https.createServer({ ...serverOptions, cert: config.tls.cert, key: config.tls.key }, (req, res) => this.handle(req, res))
      : http.createServer(serverOptions, (req, res) => this.handle(req, res));
    // Long pushes and clones must not be cut off; idle sockets are still reaped by keepAliveTimeout.
    this.server.timeout = 0;
    if (config.tls) {
      this.hookServer = http.createServer(serverOptions, (req, res) => this.handle(req, res, true));
      this.hookServer.timeout = 0;
    }
  }

  private newTxnId(): string {
    return `${this.config.serverId}-${this.clock.now().toString(36)}-${randomBytes(6).toString('hex')}`;
  }

  get url(): string {
    return this.config.selfUrl;
  }

  async start(): Promise<void> {
    if (this.config.authFile !== undefined) {
      this.users = await UserDirectory.open({ file: this.config.authFile, clock: this.clock, logger: this.logger, reloadIntervalMs: this.config.authReloadIntervalMs });
      this.gate = new Gate({ users: this.users, repoAccess: (repoId) => this.repoAccess(repoId) });
      this.users.start();
      this.logger.info('authentication on', { auth_file: this.config.authFile, users: this.users.userNames.length });
    }
    // The hook talks to this node's own listener (bash's /dev/tcp takes a bare IPv6 address).
    let hookHost = this.config.host === '0.0.0.0' ? '127.0.0.1' : this.config.host === '::' ? '::1' : this.config.host;
    let hookPort = this.config.port;
    if (this.hookServer) {
      hookHost = '127.0.0.1';
      hookPort = await listen(this.hookServer, 0, hookHost);
    }
    const hooksDir = await installHooks(this.config.dataDir, hookHost, hookPort, this.config.clusterSecret);
    applyGitEnvironment(process.env, hooksDir, { maxInputSizeBytes: this.config.maxPackBytes });
    // Catch-up fetches from https:// peers with git: the same CA as the node's own peer client. The
    // variable, not http.sslCAInfo: an inherited GIT_SSL_CAINFO (set on many machines) beats the config.
    if (this.config.tlsCaFile) process.env.GIT_SSL_CAINFO = this.config.tlsCaFile;
    await this.driver.start();
    await listen(this.server, this.config.port, this.config.host);
    this.logger.info('node listening', { url: this.url, peers: this.config.peerUrls, quorum: this.config.quorum, data_dir: this.config.dataDir, tls: this.config.tls !== undefined });
    if (this.hookServer) this.logger.info('pre-receive hook listener (plain HTTP, loopback only, hook route only)', { host: hookHost, port: hookPort });
    if (this.config.authFile === undefined) {
      this.logger.info(`no AUTH_FILE: serving anonymously, which a node does on loopback only (HOST=${this.config.host}); set AUTH_FILE to serve beyond it`);
    }
    const exposed = !isLoopbackHost(this.config.host) || [this.url, ...this.config.peerUrls].some((u) => !isLoopbackHost(new URL(u).hostname));
    if (exposed && (!this.config.tls || [this.url, ...this.config.peerUrls].some((u) => u.startsWith('http:')))) {
      this.logger.warn('this node or a peer is reached beyond loopback over plain HTTP: the cluster secret and every push travel unencrypted; set TLS_CERT, TLS_KEY and TLS_CA and use https:// URLs');
    }
    this.every(this.config.heartbeatIntervalMs, () => this.heartbeat());
    this.every(this.config.syncIntervalMs, () => this.catchUp().then(() => (this.recovered = true)));
    this.every(1000, async () => this.sampleCpu());
  }

  /** Runs `task` now and then every `ms` (a timeout on the clock, re-armed at each tick), never two at once. */
  private every(ms: number, task: () => Promise<unknown>): void {
    let running = false;
    const loop: { timer?: unknown } = {};
    this.loops.push(loop);
    const tick = (): void => {
      if (this.stopping) return;
      loop.timer = this.clock.setTimeout(tick, ms);
      if (running) return;
      running = true;
      const done = task()
        .catch((err) => this.logger.warn('background task failed', { err: (err as Error).message }))
        .finally(() => {
          running = false;
          this.background.delete(done);
        });
      this.background.add(done);
    };
    tick();
  }

  private async catchUp(): Promise<void> {
    await this.driver.resolveInDoubtOnce();
    await this.checkpointIfDue();
    // An upload is followed by its prepare within moments; one idle for two peer timeouts was abandoned.
    await this.driver.sweepIncoming(2 * this.config.peerTimeoutMs);
    const behind = await this.driver.syncOnce();
    this.metrics.replicasBehind(behind.length);
    for (const repoId of behind) await this.catchUpper.request(repoId);
    // A few repos per round have their refs compared with the peers' (divergence check).
    const live = this.driver.participant.liveRepos().filter((r) => !behind.includes(r));
    if (live.length === 0) return;
    const batch: string[] = [];
    for (let i = 0; i < Math.min(VERIFY_PER_ROUND, live.length); i += 1) batch.push(live[(this.verifyCursor + i) % live.length]!);
    this.verifyCursor = (this.verifyCursor + batch.length) % live.length;
    await this.catchUpper.verify(batch);
  }

  /**
   * Compacts the transaction log (defect 11): once enough entries were appended, the log is replaced
   * by a checkpoint of what recovery needs (lib/core/txn-core.ts Participant.checkpoint), atomically.
   */
  private async checkpointIfDue(): Promise<void> {
    if (this.txnLog.entriesSinceRewrite < this.config.checkpointEveryEntries) return;
    const entries = this.driver.participant.checkpoint(this.config.retainSettledTxns);
    await this.txnLog.rewrite(entries);
    this.logger.info('transaction log checkpointed', { entries: entries.length });
  }

  private async heartbeat(): Promise<void> {
    await Promise.all(
      [...this.peers.values()].map(async (peer) => {
        const started = this.clock.now();
        try {
          const info = await this.client.ping(peer.url, Math.min(this.config.heartbeatIntervalMs, 1000));
          this.metrics.heartbeat(peer.url, true, (this.clock.now() - started) / 1000);
          peer.server_id = info.server_id;
          peer.reachable = true;
          peer.last_seen = new Date(this.clock.now()).toISOString();
        } catch {
          this.metrics.heartbeat(peer.url, false, 0);
          peer.reachable = false;
        }
      }),
    );
  }

  private sampleCpu(): void {
    const now = os.cpus().map((c) => c.times);
    let busy = 0;
    let total = 0;
    now.forEach((t, i) => {
      const before = this.cpuSample[i];
      if (!before) return;
      const idle = t.idle - before.idle;
      const all = t.user + t.nice + t.sys + t.irq + t.idle - (before.user + before.nice + before.sys + before.irq + before.idle);
      busy += all - idle;
      total += all;
    });
    this.cpuSample = now;
    if (total > 0) this.cpuPercent = Math.round((busy / total) * 1000) / 10;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const loop of this.loops) this.clock.clearTimeout(loop.timer);
    this.users?.stop();
    this.gitHttp.killAll();
    this.maintenance.stop();
    this.driver.close();
    const closed = [this.server, this.hookServer].filter((s) => s !== undefined).map((server) => {
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      return done;
    });
    await Promise.all(closed);
    await Promise.allSettled([...this.background]);
    this.client.close();
    this.proxy.close();
    this.proxyAgent.destroy();
    this.proxyHttpsAgent.destroy();
    this.logger.info('node stopped');
  }

  // ---------------------------------------------------------------------------------------------

  private handle(req: http.IncomingMessage, res: http.ServerResponse, hookOnly = false): void {
    // The client's id if it is safe (lib/http/request-id.ts): on the response, every log line, every peer call.
    const requestId = requestIdFrom(req.headers[REQUEST_ID_HEADER]);
    res.setHeader(REQUEST_ID_HEADER, requestId);
    this.metrics.observeRequest(req, res);
    const log = this.logger.child({ request_id: requestId });
    const started = this.clock.now();
    res.once('finish', () => {
      log.info('request', { method: req.method, path: (req.url ?? '').split('?')[0], status: res.statusCode, ms: this.clock.now() - started });
    });
    req.on('error', (err) => log.debug('request stream error', { err: err.message }));
    this.dispatch(req, res, requestId, log, hookOnly).catch((err) => this.fail(res, err, log));
  }

  private fail(res: http.ServerResponse, err: unknown, log: Logger): void {
    const known = isQuorumGitError(err) ? err : new QuorumGitError('internal', 'internal error', { cause: err });
    if (known.code === 'internal') log.error('request failed', { err });
    this.metrics.errorAnswered(known.code);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const status = statusByCode[known.code];
    // git prints a text/plain error body to its user ("remote: ..."); everyone else gets the JSON body.
    if (String(res.req?.headers['user-agent'] ?? '').startsWith('git/')) {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`quorum-git: ${known.message}\n`);
      return;
    }
    this.send(res, status, errorBody(known));
  }

  private send(res: http.ServerResponse, status: number, body?: unknown): void {
    if (body === undefined) {
      res.writeHead(status).end();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private async dispatch(req: http.IncomingMessage, res: http.ServerResponse, requestId: string, log: Logger, hookOnly: boolean): Promise<void> {
    const target: Route = route(req.method ?? 'GET', req.url ?? '/');
    if (hookOnly && target.kind !== 'internalHook') throw new QuorumGitError('not_found', 'this listener serves the pre-receive hook only');
    if (target.kind.startsWith('internal')) this.authorizePeer(req);
    // Messages that change state come from a configured peer that names itself; any other internal
    // request (the operator tools, the hook) may name no node, but never a wrong one.
    const sender = target.kind.startsWith('internal') ? this.senderOf(req, target.kind === 'internalTxn' || target.kind === 'internalPackUpload') : undefined;
    const fromPeer = this.isPeer(req);
    const ctx: RequestContext = {
      log,
      requestId,
      client: clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], fromPeer),
      method: req.method ?? 'GET',
      path: (req.url ?? '').split('?')[0]!,
    };
    let caller: Caller;
    try {
      caller = await this.gate.authorize(req, res, target, ctx, fromPeer && req.headers[PROXIED_HEADER] !== '1');
    } catch (err) {
      // A repo the caller may not see reads exactly like one that does not exist.
      if (target.kind === 'getRepo' && isQuorumGitError(err) && err.code === 'repo_not_found') return this.sendRepoNotFound(res, target.repoId);
      throw err;
    }
    this.callers.set(req, { caller, ctx });
    switch (target.kind) {
      case 'health':
        return this.send(res, 200, this.health());
      case 'healthLive':
        return this.send(res, 200, { status: 'live', server_id: this.config.serverId });
      case 'healthReady':
        return this.ready(res);
      case 'metrics':
        // Open like /health (README, Metrics): counts and states, no repo names or secrets.
        return this.metrics.respond(res);
      case 'listRepos':
        return this.apiListRepos(res, requestId);
      case 'getRepo':
        return this.apiGetRepo(res, target.repoId, requestId);
      case 'createRepo':
        return this.apiCreateRepo(req, res, requestId);
      case 'deleteRepo':
        return this.apiDeleteRepo(res, target.repoId, requestId);
      case 'updateRepoSettings':
        return this.apiUpdateSettings(req, res, target.repoId, requestId);
      case 'internalPing':
        return this.send(res, 200, { server_id: this.config.serverId, url: this.url });
      case 'internalCatalog':
        return this.send(res, 200, { repos: this.driver.participant.catalog() });
      case 'internalNode':
        return this.send(res, 200, this.nodeInfo());
      case 'internalTxn': {
        // A push's prepare lists every ref update: bounded by the refs-per-push limit, not the API's.
        const limit = this.config.maxRefsPerPush * 300 + Math.ceil(INLINE_PACK_MAX_BYTES * 1.4);
        const expected = target.step === 'prepare' ? 'prepare' : target.step === 'commit' ? 'commitTxn' : 'abortTxn';
        const { msg, inlineFiles } = parseTxnMessage(this.parseJson(await this.readBody(req, limit)), expected, {
          maxRefsPerPush: this.config.maxRefsPerPush,
          nodes: this.driver.nodes,
        });
        this.checkTxnSender(msg, sender!);
        log.debug('txn message', { txn_id: msg.txnId, type: msg.type, from: sender });
        return this.send(res, 200, await this.driver.handleMessage(msg, inlineFiles));
      }
      case 'internalQuery':
        return this.send(res, 200, await this.driver.handleQuery(target.txnId, target.refuse, target.asCoordinator));
      case 'internalHook': {
        const body = await this.readBody(req, this.config.maxRefsPerPush * 300);
        const pid = Number(req.headers['x-receive-pack-pid']);
        // From here the push may be committed anywhere: its receive-pack must not be killed when its client goes away.
        if (Number.isInteger(pid) && pid > 0) this.gitHttp.markHookStarted(pid);
        const verdict = await this.pushService.preReceive({
          gitDir: String(req.headers['x-git-dir'] ?? ''),
          quarantine: String(req.headers['x-quarantine'] ?? ''),
          receivePackPid: Number.isInteger(pid) && pid > 0 ? pid : undefined,
          body: body.toString('utf8'),
          requestId,
        });
        this.auditPush(log, req, pid, body.toString('utf8'), verdict);
        res.writeHead(verdict.ok ? 200 : 409, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(verdict.message === '' ? '' : `${verdict.message}\n`);
        return;
      }
      case 'internalPackUpload':
        return this.receivePackFile(req, res, target.txnId, target.file);
      case 'internalRepoState':
        return this.send(res, 200, { ...(await this.repoState(target.repoId, { refs: target.withRefs, digest: target.withDigest })), ...this.lockState(target.repoId) });
      case 'gitInfoRefs':
      case 'gitRpc':
        return this.serveGit(req, res, target.repoId, target.service, target.kind, log);
    }
  }

  /**
   * Git over smart HTTP. Pushes go to the repo's coordinator (proxied there when they arrive
   * elsewhere); the coordinator first makes sure its own copy is current. Reads are served here only
   * when our copy is at the newest version among R nodes, else proxied to a node that is, while
   * we catch up in the background. A peer's `direct` request (catch-up, or a proxied read) is served
   * from our own copy.
   */
  private async serveGit(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    repoId: string,
    service: 'upload-pack' | 'receive-pack',
    kind: 'gitInfoRefs' | 'gitRpc',
    log: Logger,
  ): Promise<void> {
    const fromPeer = this.isPeer(req);
    const serveLocal = async (): Promise<void> => {
      if (!this.driver.participant.isLive(repoId) || !(await this.store.exists(repoId))) {
        throw new QuorumGitError('repo_not_found', 'repository not found');
      }
      // We told read checks the version of a final commit we are still applying: serve once it is applied.
      if (kind === 'gitInfoRefs' && !(await this.driver.waitApplied(repoId, this.config.commitTimeoutMs))) {
        throw new QuorumGitError('replica_behind', 'this node is still applying the latest push to this repository; try again');
      }
      if (kind === 'gitInfoRefs') return this.gitHttp.infoRefs(req, res, repoId, service);
      this.metrics.observeGitRpc(req, res, service, !fromPeer ? 'client' : req.headers[CATCH_UP_HEADER] === '1' ? 'replica' : 'proxied');
      const who = this.callers.get(req);
      const origin = who === undefined ? undefined : { ...who.caller.who, request_id: who.ctx.requestId };
      return this.gitHttp.rpc(req, res, repoId, service, log, clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], fromPeer), origin);
    };
    if (fromPeer && req.headers[DIRECT_HEADER] === '1') return serveLocal();
    // A client already holding its share of git processes is turned away before its read check costs
    // peer round trips: 300 slow clients must not keep /health waiting behind their checks.
    if (kind === 'gitRpc') {
      const refused = this.gitHttp.refusedAsBusy(req, res, service, clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], fromPeer), log);
      if (refused) return refused;
    }
    if (service === 'receive-pack' && !fromPeer) {
      const coordinator = pickCoordinator(repoId, this.liveNodes());
      if (coordinator !== undefined && coordinator !== this.url) {
        return this.forward(req, res, coordinator, log, false, () => this.serveGit(req, res, repoId, service, kind, log));
      }
    }
    // The push itself (the POST) needs no check: the advertisement before it had one, and its
    // prepare verifies version and old values on a quorum anyway.
    if (service === 'receive-pack' && kind === 'gitRpc') return serveLocal();
    if (service === 'receive-pack') await this.pushService.waitIdle(repoId);
    // The advertisement starts while the freshness check runs; it is sent only if the check says so.
    // Not while a final commit is being applied here: that advertisement could miss it.
    const early = kind === 'gitInfoRefs' && this.driver.participant.isLive(repoId) && this.driver.participant.applying(repoId) === undefined;
    let pending = early ? this.gitHttp.prepareInfoRefs(req, repoId, service) : undefined;
    // Serves the advertisement started early if it came out whole, else a fresh one.
    const serveChecked = async (): Promise<void> => {
      const started = pending;
      pending = undefined;
      if (started && started.statusCode === 200) return started.send(res);
      started?.discard();
      return serveLocal();
    };
    res.once('close', () => {
      if (!res.headersSent) pending?.discard();
    });
    // Whatever is not served from here (proxied, refused, failed) stops the git started early.
    try {
      let plan = await this.planRead(repoId, String(res.getHeader(REQUEST_ID_HEADER)));
      if (service === 'receive-pack' && plan.action === 'proxy') {
        // The coordinator must be current before it advertises refs to a pusher.
        pending?.discard();
        pending = undefined;
        await this.catchUpper.request(repoId);
        plan = await this.planRead(repoId, String(res.getHeader(REQUEST_ID_HEADER)));
        if (plan.action === 'proxy') throw new QuorumGitError('replica_behind', 'this repository is catching up on the coordinating node; push again in a moment');
      }
      switch (plan.action) {
        case 'local':
          return serveChecked();
        case 'not_found':
          throw new QuorumGitError('repo_not_found', 'repository not found');
        case 'proxy':
          void this.catchUpper.request(repoId);
          return this.forward(req, res, plan.to, log, true);
        case 'unavailable':
          // A push needs no read quorum to be safe: its prepare checks version and old values on a
          // write quorum, so advertise our refs and let the hook give git a proper rejection.
          if (service === 'receive-pack') return serveChecked();
          if (this.config.allowStaleReads) {
            log.warn('serving a possibly stale copy (ALLOW_STALE_READS)', { repo_id: repoId });
            res.setHeader('x-quorum-possibly-stale', 'true');
            return serveChecked();
          }
          throw new QuorumGitError(
            'read_quorum_unreachable',
            `cannot confirm this copy is current: reached ${plan.reached} of the ${plan.needed} nodes needed; unreachable: ${plan.unreachable.join(', ') || 'none'}`,
          );
      }
    } finally {
      pending?.discard();
    }
  }

  /** The nodes believed up (by heartbeat), ourselves included. */
  private liveNodes(): NodeId[] {
    return [this.url, ...[...this.peers.values()].filter((p) => p.reachable).map((p) => p.url)];
  }

  private async planRead(repoId: string, requestId: string): Promise<ReturnType<typeof planRead>> {
    const own = await this.repoState(repoId, {});
    const self: ReplicaAnswer & { reachable: true } = { node: this.url, reachable: true, live: own.live, version: own };
    const n = this.driver.nodes.length;
    const r = readQuorum(n, this.config.quorum);
    if (r <= 1) return own.live ? { action: 'local' } : { action: 'not_found' };
    // Any R nodes meet every write quorum, so the plan is made as soon as R - 1 peers have answered:
    // a slow or hung peer does not hold up every read.
    const answers: ReplicaAnswer[] = [];
    await new Promise<void>((resolve) => {
      let reached = 0;
      for (const node of this.config.peerUrls) {
        this.client
          .repoState(node, repoId, {}, this.config.readCheckTimeoutMs, requestId)
          .then(
            (s) => {
              reached += 1;
              answers.push({ node, reachable: true, live: s.live, version: s });
            },
            () => answers.push({ node, reachable: false }),
          )
          .finally(() => {
            if (reached >= r - 1 || answers.length === this.config.peerUrls.length) resolve();
          });
      }
    });
    return planRead(self, [...answers], r);
  }

  private async repoState(
    repoId: string,
    want: { refs?: boolean; digest?: boolean },
  ): Promise<Record<string, unknown> & { live: boolean; epoch: number; generation: number }> {
    const entry = this.driver.participant.repo(repoId);
    const live = entry?.state === 'live';
    // A read check is told the version of a final commit still being applied here (a reader served
    // here waits for it): a push acknowledged a moment ago is never reported as not there yet.
    const reported = live ? this.driver.participant.readVersion(repoId) : { epoch: entry?.epoch ?? 0, generation: entry?.generation ?? 0 };
    const state = { repo_id: repoId, live, ...reported };
    if ((!want.refs && !want.digest) || !live) return state;
    // Mid-transaction, refs and version can disagree for a moment (receive-pack moves the refs before
    // we log the commit): no refs or digest then, or a catch-up could label newer refs with an older
    // version. The caller tries again on its next round.
    if (this.driver.participant.lockedBy(repoId) !== undefined) return state;
    // Read under the repo's queue so refs and version belong together.
    const { version, refs, head, digest } = await repoDigest(this.driver, this.store, repoId);
    const participant = this.driver.participant;
    if (participant.lockedBy(repoId) !== undefined || compareVersions(version, participant.versionOf(repoId)) !== 0) return state;
    return { ...state, ...version, digest, ...(want.refs ? { refs, head } : {}) };
  }

  /**
   * Proxies to another node. When the target is down and nothing was sent yet, it is marked
   * unreachable and a GET is routed again (a POST body is already spent, so that one fails).
   */
  private forward(req: http.IncomingMessage, res: http.ServerResponse, target: NodeId, log: Logger, direct: boolean, retry?: () => Promise<void>): void {
    log.info('proxying', { to: target, direct });
    const headers: Record<string, string> = { [SECRET_HEADER]: this.config.clusterSecret, [REQUEST_ID_HEADER]: String(res.getHeader(REQUEST_ID_HEADER)) };
    if (direct) headers[DIRECT_HEADER] = '1';
    // The client's Authorization header goes along as is: the receiving node authorizes it again.
    headers[PROXIED_HEADER] = '1';
    const agent = target.startsWith('https:') ? this.proxyHttpsAgent : this.proxyAgent;
    this.proxy.web(req, res, { target, headers, agent }, (err) => {
      log.warn('proxy failed', { to: target, err: (err as Error).message });
      const peer = this.peers.get(target);
      if (peer && (err as NodeJS.ErrnoException).code === 'ECONNREFUSED') peer.reachable = false;
      if (res.headersSent) {
        res.destroy();
      } else if (retry && req.method === 'GET' && peer?.reachable === false) {
        retry().catch((e) => this.fail(res, e, log));
      } else {
        this.fail(res, new QuorumGitError('peer_unavailable', `the node serving this request (${target}) did not answer; try again`), log);
      }
    });
  }

  private isPeer(req: http.IncomingMessage): boolean {
    // Fixed-length digests: comparing the raw values would end early on a length mismatch and so
    // tell an attacker the secret's length.
    const given = createHash('sha256').update(String(req.headers[SECRET_HEADER] ?? '')).digest();
    const expected = createHash('sha256').update(this.config.clusterSecret).digest();
    return timingSafeEqual(given, expected);
  }

  /** A peer streams one file of a push's pack to us ahead of the prepare; bounded, never buffered. */
  private async receivePackFile(req: http.IncomingMessage, res: http.ServerResponse, txnId: string, file: string): Promise<void> {
    const dir = this.store.incomingDir(txnId);
    await fsp.mkdir(dir, { recursive: true });
    const tmp = path.join(dir, `${file}.tmp`);
    let size = 0;
    const limit = this.config.maxPackBytes;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        size += chunk.length;
        if (size > limit) done(new QuorumGitError('body_too_large', `pack exceeds ${limit} bytes`));
        else done(null, chunk);
      },
    });
    try {
      // fsynced before it is closed: a peer's yes vote promises it has the objects.
      await pipeline(req, counter, createWriteStream(tmp, { flush: true }));
      await fsp.rename(tmp, path.join(dir, file));
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    }
    this.send(res, 204);
  }

  private async replicate(op: TxnOp, requestId: string, res: http.ServerResponse, txnIds: string[] = []): Promise<void> {
    // Two coordinators that lock the same name on different nodes can both lose (repo_busy) when no
    // third node breaks the tie; each retries after a random pause, and the second attempt of the
    // loser then finds the winner's repo (repo_exists).
    const run = (): ReturnType<TxnDriver['runTxn']> => {
      const txnId = this.newTxnId();
      txnIds.push(txnId);
      return this.metrics.timeTxn(op.kind, () => this.driver.runTxn(op, requestId, { txnId }));
    };
    let result = await run();
    for (let attempt = 1; attempt <= BUSY_RETRIES && result.outcome === 'aborted' && result.code === 'repo_busy'; attempt += 1) {
      await sleep(this.clock, randomInt(BUSY_BACKOFF_MS * attempt, BUSY_BACKOFF_MS * attempt * 3));
      result = await run();
    }
    if (result.outcome === 'aborted') {
      const failedPeers = result.failed.filter((n) => n !== this.url);
      switch (result.code) {
        case 'repo_exists':
          throw new QuorumGitError('repo_exists', `repository ${op.repoId} already exists`);
        case 'repo_not_found':
          throw new QuorumGitError('repo_not_found', `repository ${op.repoId} does not exist`);
        case 'repo_busy':
          throw new QuorumGitError('repo_busy', `repository ${op.repoId} is being changed by another request; retry`);
        case 'stale':
        case 'ref_conflict':
        case 'ref_name_clash':
        case 'protected_ref':
        case 'quorum_unreachable':
          throw new QuorumGitError(
            'quorum_unreachable',
            `could not reach a quorum of ${this.config.quorum} of ${this.driver.nodes.length} nodes; failed: ${result.failed.join(', ') || 'none'}. Nothing was changed.`,
            { details: { failed_peers: failedPeers, quorum: this.config.quorum } },
          );
      }
    }
    if (result.final === false) {
      // Decided here, but no other node was known to hold the decision: recovery settles it either way.
      throw new QuorumGitError(
        'txn_in_doubt',
        `the ${op.kind} of ${op.repoId} was decided but no other node confirmed it in time; its outcome is settled by recovery within seconds: check with GET /repos/${op.repoId}`,
      );
    }
    const confirmedPeers = result.confirmed.filter((n) => n !== this.url);
    if (op.kind === 'delete') {
      // Final, but fewer than W nodes had removed it when the commit resends ran out (the rest do by
      // recovery): 202 says so, as a create's does.
      if (result.confirmed.length >= this.config.quorum) return this.send(res, 204);
      return this.send(res, 202, { repo_id: op.repoId, deleted: true, replicated: false, nodes_confirmed: result.confirmed.length, quorum: this.config.quorum });
    }
    return this.send(res, result.confirmed.length >= this.config.quorum ? 201 : 202, {
      repo_id: op.repoId,
      created: true,
      replicated: result.confirmed.length >= this.config.quorum,
      peers_confirmed: confirmedPeers.length,
      nodes_confirmed: result.confirmed,
      quorum: this.config.quorum,
      epoch: result.epoch,
      clone_url: `${this.url}/${op.repoId}.git`,
    });
  }

  // Management API ------------------------------------------------------------------------------
  //
  // Reads and pre-checks give read-your-writes across nodes, like git reads: R = N-W+1 nodes (this
  // one included) meet every write quorum, so the newest state among their answers includes every
  // acknowledged create and delete, whether or not this node has applied it yet.

  private async apiGetRepo(res: http.ServerResponse, repoId: string, requestId: string): Promise<void> {
    const plan = await this.planRead(repoId, requestId);
    switch (plan.action) {
      case 'unavailable':
        throw this.readQuorumError(plan);
      case 'not_found':
        return this.sendRepoNotFound(res, repoId);
      case 'local':
      case 'proxy': {
        // 'local': our copy is the newest, read again now (it can only have moved on).
        const version = plan.action === 'proxy' ? plan.newest : this.driver.participant.versionOf(repoId);
        return this.send(res, 200, { repo_id: repoId, exists: true, epoch: version.epoch, generation: version.generation, ...this.settingsShown(res, repoId) });
      }
    }
  }

  /**
   * The pre-check only gives a fast clear answer; the participants' votes decide. So when it cannot
   * reach R nodes, or our own catalog is behind, the 2PC still runs and answers.
   */
  private async apiCreateRepo(req: http.IncomingMessage, res: http.ServerResponse, requestId: string): Promise<void> {
    const body = await this.readJson(req);
    const repoId = this.repoIdFromBody(body);
    // A create may set the visibility (the repo's initial settings); the rest is changed by PATCH.
    const visibility = (body as { visibility?: unknown }).visibility;
    if (visibility !== undefined && visibility !== 'public' && visibility !== 'private') throw new QuorumGitError('invalid_body', "visibility must be 'public' or 'private'");
    const { caller, ctx } = this.callers.get(req)!;
    this.gate.checkCreate(res, ctx, caller, repoId);
    const settings: RepoSettings | undefined = visibility === undefined ? undefined : { ...DEFAULT_REPO_SETTINGS, visibility };
    return this.audited('create', res, repoId, async (txnIds) => {
      const plan = await this.planRead(repoId, requestId);
      if (plan.action === 'local' || plan.action === 'proxy') throw new QuorumGitError('repo_exists', `repository ${repoId} already exists`);
      return this.replicate({ kind: 'create', repoId, ...(settings === undefined ? {} : { settings }) }, requestId, res, txnIds);
    });
  }

  private async apiDeleteRepo(res: http.ServerResponse, repoId: string, requestId: string): Promise<void> {
    return this.audited('delete', res, repoId, async (txnIds) => {
      const plan = await this.planRead(repoId, requestId);
      if (plan.action === 'not_found') throw new QuorumGitError('repo_not_found', `repository ${repoId} does not exist`);
      return this.replicate({ kind: 'delete', repoId }, requestId, res, txnIds);
    });
  }

  /** Runs a create, delete or settings change and writes its audit line: who, the outcome (the status, or the error's code), its transactions. */
  private async audited(
    action: 'create' | 'delete' | 'settings',
    res: http.ServerResponse,
    repoId: string,
    run: (txnIds: string[]) => Promise<void>,
    extra: { settings?: unknown } = {},
  ): Promise<void> {
    const { caller, ctx } = this.callers.get(res.req)!;
    const txnIds: string[] = [];
    const line = (outcome: string): void => auditRepoChange(ctx.log, { ...caller.who, action, request_id: ctx.requestId, repo_id: repoId, outcome, txn_ids: txnIds, ...extra });
    try {
      await run(txnIds);
    } catch (err) {
      line(isQuorumGitError(err) ? err.code : 'internal');
      throw err;
    }
    line(res.statusCode === 202 ? 'committed_unconfirmed' : 'committed');
  }

  /** One push's audit line, written where its pre-receive hook ran (the repo's coordinator). */
  private auditPush(log: Logger, req: http.IncomingMessage, pid: number, body: string, verdict: { ok: boolean; message: string; txnId?: string }): void {
    const repoId = this.store.repoIdOf(String(req.headers['x-git-dir'] ?? '')) ?? 'unknown';
    const origin = (Number.isInteger(pid) && pid > 0 ? this.gitHttp.receivePackOrigin(pid) : undefined) as (AuditWho & { request_id?: string }) | undefined;
    const { updates, total } = auditUpdates(body);
    if (total === 0) return;
    const reason = verdict.ok ? undefined : verdict.message.split('\n')[0]!.replace(/^quorum-git: /, '').slice(0, 300);
    auditPush(log, {
      ...(origin ?? { user: null, client: 'unknown' }),
      request_id: origin?.request_id,
      repo_id: repoId,
      updates,
      refs_total: total,
      outcome: verdict.ok ? 'committed' : 'rejected',
      ...(reason === undefined ? {} : { reason }),
      ...(verdict.txnId === undefined ? {} : { txn_id: verdict.txnId }),
    });
  }

  /**
   * A repo's access settings (lib/http/authz.ts): this node's copy of the replicated settings. Every node
   * holds the same committed settings once applied; a node that missed a change adopts it by
   * anti-entropy (TxnDriver.syncOnce), and until then decides by the settings it has.
   */
  private repoAccess(repoId: string): RepoAccess {
    const settings = this.driver.participant.repo(repoId)?.settings ?? DEFAULT_REPO_SETTINGS;
    return { visibility: settings.visibility, collaborators: settings.collaborators };
  }

  /** A repo's settings as GET shows them: collaborators only to those who may change them. */
  private settingsShown(res: http.ServerResponse, repoId: string): Record<string, unknown> {
    const entry = this.driver.participant.repo(repoId);
    const { visibility, collaborators, protected_branches } = settingsView(entry?.settings ?? DEFAULT_REPO_SETTINGS);
    const caller = this.callers.get(res.req)?.caller;
    const admin = caller === undefined || !caller.enforced || decideRepo(caller.principal, repoId, 'admin', this.repoAccess(repoId)).allow;
    return { visibility, protected_branches, ...(admin ? { collaborators } : {}), settings_version: entry?.settingsVersion ?? 0 };
  }

  /**
   * PATCH /repos/o/n: a settings change, committed on a quorum like a create (a `settings`
   * transaction). It is based on the newest settings among R nodes; a concurrent change that commits
   * first makes the participants vote stale: 409 settings_conflict, nothing changed, read and retry.
   */
  private async apiUpdateSettings(req: http.IncomingMessage, res: http.ServerResponse, repoId: string, requestId: string): Promise<void> {
    const body = await this.readJson(req);
    const found = newestSettings(await this.readCatalogs(requestId), repoId, readQuorum(this.driver.nodes.length, this.config.quorum));
    if (found.action === 'unavailable') throw this.readQuorumError(found);
    if (found.action === 'not_found' || found.action === 'merged') return this.sendRepoNotFound(res, repoId);
    const change = applySettingsChange(found.entry?.settings ?? DEFAULT_REPO_SETTINGS, body);
    if ('problem' in change) throw new QuorumGitError('invalid_body', change.problem);
    const { settings } = change;
    const base = { epoch: found.epoch, settingsVersion: found.settingsVersion };
    return this.audited(
      'settings',
      res,
      repoId,
      async (txnIds) => {
        const txnId = this.newTxnId();
        txnIds.push(txnId);
        const result = await this.metrics.timeTxn('settings', () => this.driver.runTxn({ kind: 'settings', repoId, settings, base }, requestId, { txnId }));
        if (result.outcome === 'aborted') {
          switch (result.code) {
            case 'stale':
              throw new QuorumGitError('settings_conflict', `the settings of ${repoId} were changed by another request meanwhile; nothing was changed: read them again (GET /repos/${repoId}) and retry`);
            case 'repo_not_found':
              throw new QuorumGitError('repo_not_found', `repository ${repoId} does not exist`);
            case 'repo_busy':
              throw new QuorumGitError('repo_busy', `repository ${repoId} is being changed by another request; retry`);
            default:
              throw new QuorumGitError('quorum_unreachable', `could not reach a quorum of ${this.config.quorum} of ${this.driver.nodes.length} nodes; failed: ${result.failed.join(', ') || 'none'}. Nothing was changed.`);
          }
        }
        if (result.final === false) {
          throw new QuorumGitError('txn_in_doubt', `the settings change of ${repoId} was decided but no other node confirmed it in time; its outcome is settled by recovery within seconds: check with GET /repos/${repoId}`);
        }
        return this.send(res, 200, { repo_id: repoId, ...settingsView(settings), settings_version: result.generation, nodes_confirmed: result.confirmed });
      },
      { settings: settingsView(settings) },
    );
  }

  private sendRepoNotFound(res: http.ServerResponse, repoId: string): void {
    const err = new QuorumGitError('repo_not_found', `repository ${repoId} does not exist`);
    this.send(res, 404, { repo_id: repoId, exists: false, ...errorBody(err) });
  }

  /** The live repos by the catalogs of R nodes, newest state per repo; 503 with fewer than R. */
  private async apiListRepos(res: http.ServerResponse, requestId: string): Promise<void> {
    const r = readQuorum(this.driver.nodes.length, this.config.quorum);
    const merged = mergeCatalogs(await this.readCatalogs(requestId), r);
    if (merged.action === 'unavailable') throw this.readQuorumError(merged);
    const { caller } = this.callers.get(res.req)!;
    const repos = Object.entries(merged.repos)
      .filter(([id, e]) => e.state === 'live' && this.gate.canRead(caller, id))
      .map(([id]) => id);
    return this.send(res, 200, { repos, count: repos.length });
  }

  /** Our catalog and those of at least R - 1 peers (fewer if not reachable; the merge then refuses). */
  private async readCatalogs(requestId: string): Promise<CatalogAnswer[]> {
    const r = readQuorum(this.driver.nodes.length, this.config.quorum);
    const answers: CatalogAnswer[] = [{ node: this.url, reachable: true, catalog: this.driver.participant.catalog() }];
    if (r > 1) {
      // As in planRead: decided as soon as R - 1 peers have answered, so one hung peer costs nothing.
      await new Promise<void>((resolve) => {
        let reached = 0;
        let settled = 0;
        for (const node of this.config.peerUrls) {
          this.client
            .readCatalog(node, this.config.readCheckTimeoutMs, requestId)
            .then(
              (catalog) => {
                reached += 1;
                answers.push({ node, reachable: true, catalog });
              },
              () => answers.push({ node, reachable: false }),
            )
            .finally(() => {
              settled += 1;
              if (reached >= r - 1 || settled === this.config.peerUrls.length) resolve();
            });
        }
      });
    }
    return [...answers];
  }

  private readQuorumError(plan: Extract<ReadPlan, { action: 'unavailable' }>): QuorumGitError {
    return new QuorumGitError(
      'read_quorum_unreachable',
      `cannot confirm the current state: reached ${plan.reached} of the ${plan.needed} nodes needed; unreachable: ${plan.unreachable.join(', ') || 'none'}`,
      { details: { reached: plan.reached, needed: plan.needed } },
    );
  }

  /** GET /internal/node: who we are and how we are, for the operator tools. */
  private nodeInfo(): Record<string, unknown> {
    return {
      server_id: this.config.serverId,
      url: this.url,
      nodes: this.driver.nodes,
      quorum: this.config.quorum,
      recovered: this.recovered,
      in_doubt: this.driver.participant.inDoubt().length,
      repos: this.driver.participant.liveRepos().length,
    };
  }

  /** Added to the internal repo-state answer, so `verify` can tell a replica held by a transaction. */
  private lockState(repoId: string): { locked: boolean; in_doubt: boolean } {
    return {
      locked: this.driver.participant.lockedBy(repoId) !== undefined,
      in_doubt: this.driver.participant.inDoubt().some((t) => t.op.repoId === repoId),
    };
  }

  private repoIdFromBody(body: unknown): string {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new QuorumGitError('invalid_body', 'the body must be a JSON object like {"repo_id": "owner/name"}');
    }
    const unknownKeys = Object.keys(body).filter((k) => k !== 'repo_id' && k !== 'visibility');
    if (unknownKeys.length > 0) throw new QuorumGitError('invalid_body', `unknown field(s): ${unknownKeys.join(', ')}`);
    if (!('repo_id' in body)) throw new QuorumGitError('invalid_body', 'repo_id is required');
    const id = parseRepoId((body as { repo_id: unknown }).repo_id);
    return `${id.owner}/${id.name}`;
  }

  private authorizePeer(req: http.IncomingMessage): void {
    if (!this.isPeer(req)) throw new QuorumGitError('unauthorized', 'internal API: missing or wrong cluster secret');
  }

  /** The configured peer an internal request says it comes from (NODE_HEADER); required when `required`. */
  private senderOf(req: http.IncomingMessage, required: boolean): NodeId | undefined {
    const named = req.headers[NODE_HEADER];
    if (named === undefined && !required) return undefined;
    if (typeof named !== 'string' || !this.config.peerUrls.includes(named)) {
      throw new QuorumGitError('unknown_peer', `internal API: ${NODE_HEADER} must name one of this node's peers (PEER_URLS)`);
    }
    return named;
  }

  /**
   * A prepare names its sender as coordinator; a commit or abort of a transaction prepared here comes
   * from that coordinator only (one with no record here, from any peer: the core refuses a commit it
   * never prepared, and an abort of it only promises never to prepare it). And a create or delete
   * commit must be plausible (commitEpochProblem). With one shared secret these stop a confused or
   * misrouted peer, not a holder of the secret: README, Security.
   */
  private checkTxnSender(msg: TxnMessage, sender: NodeId): void {
    if (msg.type === 'prepare') {
      if (msg.coordinator !== sender) throw new QuorumGitError('not_coordinator', `a prepare must name its sender (${sender}) as coordinator, not ${msg.coordinator}`);
      return;
    }
    const participant = this.driver.participant;
    const coordinator = participant.coordinatorOf(msg.txnId);
    if (coordinator !== undefined && coordinator !== sender) {
      throw new QuorumGitError('not_coordinator', `transaction ${msg.txnId} was prepared by ${coordinator}: only it may commit or abort it`);
    }
    if (msg.type === 'commitTxn') {
      const op = participant.opOf(msg.txnId);
      const problem = op === undefined ? undefined : commitEpochProblem(op, participant.versionOf(op.repoId), msg.epoch);
      if (problem !== undefined) {
        this.logger.warn('refused an implausible commit', { txn_id: msg.txnId, from: sender, repo_id: op?.repoId, epoch: msg.epoch });
        throw new QuorumGitError('invalid_body', problem);
      }
    }
  }

  private async readJson(req: http.IncomingMessage): Promise<unknown> {
    // Only application/json: a cross-site HTML form can send text/plain (or urlencoded) without a
    // preflight, so accepting those would let any web page create repos through a browser.
    const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      req.resume();
      throw new QuorumGitError('unsupported_media_type', `the body must be application/json, got ${type === '' ? 'no content-type' : type}`);
    }
    return this.parseJson(await this.readBody(req, this.config.maxBodyBytes));
  }

  private parseJson(body: Buffer): unknown {
    try {
      return JSON.parse(body.toString('utf8'));
    } catch {
      throw new QuorumGitError('invalid_json', 'the body is not valid JSON');
    }
  }

  private readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > limit) {
      req.resume();
      return Promise.reject(new QuorumGitError('body_too_large', `the body exceeds ${limit} bytes`));
    }
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let failed = false;
      req.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit && !failed) {
          failed = true;
          reject(new QuorumGitError('body_too_large', `the body exceeds ${limit} bytes`));
        }
        if (!failed) chunks.push(chunk);
      });
      req.on('end', () => {
        if (!failed) resolve(Buffer.concat(chunks));
      });
      req.on('error', (err) => reject(new QuorumGitError('invalid_body', 'the request body could not be read', { cause: err })));
    });
  }

  private readiness(): Readiness {
    const nodesReachable = 1 + [...this.peers.values()].filter((p) => p.reachable).length;
    return readiness({ recovered: this.recovered, nodesReachable, nodes: this.driver.nodes.length, quorum: this.config.quorum });
  }

  /** GET /health/ready: 200 once recovered with a write quorum reachable, else 503 saying why. */
  private ready(res: http.ServerResponse): void {
    const { ready, reasons } = this.readiness();
    if (ready) return this.send(res, 200, { status: 'ready', server_id: this.config.serverId });
    const err = new QuorumGitError('not_ready', `not ready: ${reasons.join('; ')}`, { details: { reasons } });
    this.send(res, statusByCode[err.code], errorBody(err));
  }

  private health(): Record<string, unknown> {
    const peers = [...this.peers.values()];
    return {
      status: 'ok',
      server_id: this.config.serverId,
      url: this.url,
      timestamp: new Date(this.clock.now()).toISOString(),
      load: { cpu: this.cpuPercent, memory: Math.round((1 - os.freemem() / os.totalmem()) * 1000) / 10 },
      peers: peers.length,
      peers_reachable: peers.filter((p) => p.reachable).length,
      peer_status: peers,
      quorum: this.config.quorum,
      repos: this.driver.participant.liveRepos().length,
      // Replicas here whose catch-up or repair failed several rounds in a row (lib/cluster/catch-up.ts).
      replicas_not_converging: this.catchUpper.notConverging(),
    };
  }
}

/** Listens and resolves with the port bound (for port 0, the one the system chose). */
function listen(server: http.Server, port: number, host: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}
