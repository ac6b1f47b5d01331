import { randomBytes } from 'node:crypto';
import type http from 'node:http';
import type { Config } from './base/config.js';
import type { Logger } from './base/logger.js';
import { PeerClient } from './cluster/peer-client.js';
import { RepoStore } from './storage/repo-store.js';
import { GitReplica } from './storage/replica.js';
import { systemClock, type Clock } from './base/clock.js';
import { syncFileSystem } from './base/durable-fs.js';
import { TxnDriver } from './cluster/txn-driver.js';
import { TxnLog } from './storage/txn-log.js';
import { CatchUp } from './cluster/catch-up.js';
import { AntiEntropy } from './cluster/anti-entropy.js';
import { Membership } from './cluster/membership.js';
import { NodeMetrics } from './base/metrics.js';
import { applyGitEnvironment, installHooks } from './git/hooks.js';
import { isLoopbackHost } from './base/config.js';
import { Maintenance } from './git/maintenance.js';
import { PackTee } from './cluster/pack-tee.js';
import { PushService } from './cluster/push-service.js';
import { UserDirectory } from './http/auth.js';
import { Gate, type Callers } from './http/authz.js';
import { HttpApp } from './http/app.js';
import { GitGateway } from './http/git-gateway.js';
import { GitHttp } from './http/git-http.js';
import { PKT_MAX_BYTES } from './git/pkt-line.js';
import { REF_UPDATE_BYTES } from './core/txn-core.js';
import { Health, readiness, type Readiness } from './http/health.js';
import { InternalApi } from './http/internal-api.js';
import { ManagementApi, repoAccess } from './http/management-api.js';

// One node: wires the rooms together (the HTTP app with the management API, the internal API and the
// git gateway; the peer client, membership, catch-up and anti-entropy), and runs its lifecycle:
// start, the background loops (peer heartbeat, recovery of in-doubt transactions, anti-entropy), stop.

/** Packs up to this size ride inside the prepare message (saves a request per peer on small pushes). */
const INLINE_PACK_MAX_BYTES = 512 * 1024;
/** How long the start-up check that `sync -f` works may take. */
const FILE_SYSTEM_SYNC_PROBE_MS = 30_000;
/** A push's commands: the same bound per ref as the hook's input, plus one pkt-line of slack. */
function pushHeadBytes(config: Config): number {
  return config.maxRefsPerPush * REF_UPDATE_BYTES + PKT_MAX_BYTES;
}

/** Push options a push may send between its commands and its pack, for streaming its pack ahead. */
const STREAM_AHEAD_MAX_OPTIONS_BYTES = 1024 * 1024;
/** How far a peer may fall behind a pushing client before its stream ahead is given up (memory per peer). */
const STREAM_AHEAD_MAX_BUFFERED_BYTES = 16 * 1024 * 1024;

export class QuorumGitNode {
  readonly config: Config;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly store: RepoStore;
  private readonly replica: GitReplica;
  private readonly client: PeerClient;
  private readonly driver: TxnDriver;
  private readonly txnLog: TxnLog;
  private readonly gitHttp: GitHttp;
  private readonly pushService: PushService;
  private readonly catchUpper: CatchUp;
  private readonly antiEntropy: AntiEntropy;
  private readonly membership: Membership;
  private readonly maintenance: Maintenance;
  private readonly metrics: NodeMetrics;
  private readonly health: Health;
  private readonly gateway: GitGateway;
  private readonly app: HttpApp;
  /** The background loops' next timers (see every()), cleared by stop(). */
  private readonly loops: { timer?: unknown }[] = [];
  /** Background tasks in flight, awaited by stop(). */
  private readonly background = new Set<Promise<unknown>>();
  private stopping = false;
  /** The first recovery round since start (in-doubt resolution, catalog sync) has run; for `status`. */
  private recovered = false;
  /** The users file, with AUTH_FILE; read at start. */
  private users: UserDirectory | undefined;
  private gate = new Gate({ users: undefined, repoAccess: (repoId) => repoAccess(this.driver, repoId) });
  /** Who sent each request being served, for the handlers after the router (and the audit log). */
  private readonly callers: Callers = new WeakMap();

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
    this.replica = new GitReplica(this.store, logger, clock);
    this.driver = new TxnDriver({
      self: config.selfUrl,
      peers: config.peerUrls,
      quorum: config.quorum,
      log: this.txnLog,
      replica: this.replica,
      transport: this.client,
      logger,
      clock,
      newTxnId: () => this.newTxnId(),
      afterWrite: (repoId) => this.maintenance.touched(repoId),
      observePhase: (kind, phase, ms) => this.metrics.txnPhaseObserved(kind, phase, ms),
      timeouts: { prepareTimeoutMs: config.prepareTimeoutMs, commitTimeoutMs: config.commitTimeoutMs, commitResends: config.commitResends },
    });
    this.gitHttp = new GitHttp((repoId) => this.store.repoPath(repoId), logger, {
      maxHeadBytes: pushHeadBytes(config),
      bodyIdleTimeoutMs: config.gitBodyIdleTimeoutMs,
      maxProcesses: config.maxGitProcesses,
      maxProcessesPerClient: config.maxGitProcessesPerClient,
      queueWaitMs: config.gitQueueWaitMs,
    }, clock, config.streamPacksAhead ? (requestId) => this.packTee(requestId) : undefined);
    this.pushService = new PushService({
      driver: this.driver,
      store: this.store,
      client: this.client,
      logger,
      quorum: config.quorum,
      limits: { maxRefsPerPush: config.maxRefsPerPush, inlinePackMaxBytes: INLINE_PACK_MAX_BYTES, prepareMsPerMiB: config.prepareTimeoutPerMiBMs, prepareMsPerRef: config.prepareTimeoutPerRefMs, pushLockTimeoutMs: config.pushLockTimeoutMs, localApplyTimeoutMs: config.commitTimeoutMs * 10 },
      newTxnId: () => this.newTxnId(),
      receivePackExit: (pid) => this.gitHttp.receivePackExit(pid),
      packTee: (pid) => this.gitHttp.receivePackTee(pid),
      handsRefs: (pid) => this.gitHttp.receivePackHandsRefs(pid),
      timeTxn: (kind, run) => this.metrics.timeTxn(kind, run),
      packShipped: (how) => this.metrics.packShipped(how),
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
    this.antiEntropy = new AntiEntropy({
      driver: this.driver,
      catchUp: this.catchUpper,
      observeBehind: (count) => this.metrics.replicasBehind(count),
      clock,
      verifyIntervalMs: config.verifyIntervalMs,
    });
    this.membership = new Membership({
      self: config.selfUrl,
      peers: config.peerUrls,
      client: this.client,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      clock,
      observe: (peer, answered, seconds) => this.metrics.heartbeat(peer, answered, seconds),
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
        gitSlotsInUse: () => this.gitHttp.slotsInUse,
        peers: () => this.membership.values(),
      },
    });
    this.health = new Health({
      serverId: config.serverId,
      url: config.selfUrl,
      quorum: config.quorum,
      clock,
      peers: () => this.membership.values(),
      liveRepos: () => this.driver.participant.liveRepos().length,
      notConverging: () => this.catchUpper.notConverging(),
    });
    this.gateway = new GitGateway({
      config,
      driver: this.driver,
      store: this.store,
      client: this.client,
      gitHttp: this.gitHttp,
      pushService: this.pushService,
      catchUp: this.catchUpper,
      membership: this.membership,
      metrics: this.metrics,
      callers: this.callers,
      fail: (res: http.ServerResponse, err: unknown, log: Logger) => this.app.fail(res, err, log),
    });
    this.app = new HttpApp({
      config,
      logger,
      clock,
      metrics: this.metrics,
      gate: () => this.gate,
      callers: this.callers,
      health: this.health,
      readiness: () => this.readiness(),
      management: new ManagementApi({
        config,
        driver: this.driver,
        client: this.client,
        clock,
        metrics: this.metrics,
        gate: () => this.gate,
        callers: this.callers,
        newTxnId: () => this.newTxnId(),
        planRead: (repoId, requestId) => this.gateway.planRead(repoId, requestId),
      }),
      internal: new InternalApi({
        config,
        inlinePackMaxBytes: INLINE_PACK_MAX_BYTES,
        driver: this.driver,
        store: this.store,
        gitHttp: this.gitHttp,
        pushService: this.pushService,
        logger,
        recovered: () => this.recovered,
      }),
      gateway: this.gateway,
    });
  }

  /** A push's pack streamed to every peer not declared dead as its client sends it (lib/cluster/pack-tee.ts). */
  private packTee(requestId: string | undefined): PackTee {
    const dead = this.driver.participant.deadNodes();
    return new PackTee({
      peers: this.driver.nodes.filter((n) => n !== this.config.selfUrl && !dead.includes(n)),
      upload: (peer, stageId, body) => this.client.stagePack(peer, stageId, body, requestId),
      discard: (peer, stageId) => this.client.dropStagedPack(peer, stageId, requestId),
      minPackBytes: INLINE_PACK_MAX_BYTES,
      maxPreambleBytes: pushHeadBytes(this.config) + STREAM_AHEAD_MAX_OPTIONS_BYTES,
      maxBufferedBytes: STREAM_AHEAD_MAX_BUFFERED_BYTES,
      logger: this.logger,
    });
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
      this.gate = new Gate({ users: this.users, repoAccess: (repoId) => repoAccess(this.driver, repoId) });
      this.users.start();
      this.logger.info('authentication on', { auth_file: this.config.authFile, users: this.users.userNames.length });
    }
    // The hook talks to this node's own listener (bash's /dev/tcp takes a bare IPv6 address).
    let hookHost = this.config.host === '0.0.0.0' ? '127.0.0.1' : this.config.host === '::' ? '::1' : this.config.host;
    let hookPort = this.config.port;
    if (this.app.hasHookListener) {
      hookHost = '127.0.0.1';
      hookPort = await this.app.listenHook(hookHost);
    }
    const hooksDir = await installHooks(this.config.dataDir, hookHost, hookPort, this.config.clusterSecret);
    applyGitEnvironment(process.env, hooksDir, { maxInputSizeBytes: this.config.maxPackBytes });
    // Catch-up fetches from https:// peers with git: the same CA as the node's own peer client. The
    // variable, not http.sslCAInfo: an inherited GIT_SSL_CAINFO (set on many machines) beats the config.
    if (this.config.tlsCaFile) process.env.GIT_SSL_CAINFO = this.config.tlsCaFile;
    // A peer's prepare of many refs syncs the file system once (`sync -f`, lib/git/ref-txn.ts); where
    // that does not work, it keeps git's fsync of each lock, slower and as durable. Checked while the
    // driver starts (no prepare is taken before the node listens).
    const syncProbe = syncFileSystem(this.config.dataDir, FILE_SYSTEM_SYNC_PROBE_MS, this.clock).catch((err: Error) => {
      this.replica.keepGitFsyncs();
      this.logger.warn('`sync -f` does not work on DATA_DIR: a push of many refs is made durable by git\'s fsync of each ref instead (slower)', { err: err.message });
    });
    await Promise.all([this.driver.start(), syncProbe]);
    await this.app.listen(this.config.port, this.config.host);
    this.logger.info('node listening', { url: this.url, peers: this.config.peerUrls, quorum: this.config.quorum, data_dir: this.config.dataDir, tls: this.config.tls !== undefined });
    if (this.app.hasHookListener) this.logger.info('git hook listener (plain HTTP, loopback only, hook routes only)', { host: hookHost, port: hookPort });
    if (this.config.authFile === undefined) {
      this.logger.info(`no AUTH_FILE: serving anonymously, which a node does on loopback only (HOST=${this.config.host}); set AUTH_FILE to serve beyond it`);
    }
    const exposed = !isLoopbackHost(this.config.host) || [this.url, ...this.config.peerUrls].some((u) => !isLoopbackHost(new URL(u).hostname));
    if (exposed && (!this.config.tls || [this.url, ...this.config.peerUrls].some((u) => u.startsWith('http:')))) {
      this.logger.warn('this node or a peer is reached beyond loopback over plain HTTP: the cluster secret and every push travel unencrypted; set TLS_CERT, TLS_KEY and TLS_CA and use https:// URLs');
    }
    this.every(this.config.heartbeatIntervalMs, () => this.membership.heartbeat());
    // Recovery and anti-entropy run in loops of their own: a prepared transaction left by a lost vote
    // holds its repo until recovery settles it, and under 32 concurrent clients a slow anti-entropy
    // round ahead of it kept one waiting 50 s (every push to that repo refused meanwhile).
    let recoveredOnce = false;
    let syncedOnce = false;
    const settled = (): void => {
      if (recoveredOnce && syncedOnce) this.recovered = true;
    };
    this.every(this.config.syncIntervalMs, () => this.recover().then(() => ((recoveredOnce = true), settled())));
    this.every(this.config.syncIntervalMs, () => this.antiEntropy.round().then(() => ((syncedOnce = true), settled())));
    this.every(1000, async () => this.health.sampleCpu());
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

  /** One round of recovery: in-doubt transactions, the log's checkpoint, abandoned uploads. */
  private async recover(): Promise<void> {
    await this.driver.resolveInDoubtOnce();
    await this.checkpointIfDue();
    // An upload is followed by its prepare within moments; one idle for two peer timeouts was abandoned.
    await this.driver.sweepIncoming(2 * this.config.peerTimeoutMs);
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

  private readiness(): Readiness {
    return readiness({ recovered: this.recovered, nodesReachable: this.membership.reachableCount(), nodes: this.driver.nodes.length, quorum: this.config.quorum });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const loop of this.loops) this.clock.clearTimeout(loop.timer);
    this.users?.stop();
    this.gitHttp.killAll();
    this.maintenance.stop();
    this.driver.close();
    await this.app.close();
    await Promise.allSettled([...this.background]);
    this.client.close();
    this.gateway.close();
    this.logger.info('node stopped');
  }
}
