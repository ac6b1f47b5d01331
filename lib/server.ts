import { randomBytes, randomInt, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import type { Config } from './config.js';
import { QuorumGitError, errorBody, isQuorumGitError, statusByCode } from './errors.js';
import { GitHttp } from './git-http.js';
import type { Logger } from './logger.js';
import { PeerClient, REQUEST_ID_HEADER, SECRET_HEADER } from './peer-client.js';
import { parseRepoId } from './repo-id.js';
import { RepoStore } from './repo-store.js';
import { route, type Route } from './router.js';
import type { NodeId, TxnMessage, TxnOp } from './txn-core.js';
import { TxnDriver, systemClock, type Clock } from './txn-driver.js';
import { TxnLog } from './txn-log.js';

// One node: the HTTP server that wires router, management API, internal API and git together, and
// the background loops (peer heartbeat, recovery of in-doubt transactions, anti-entropy).

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/;
const BUSY_RETRIES = 3;
const BUSY_BACKOFF_MS = 15;

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
  private readonly gitHttp: GitHttp;
  private readonly server: http.Server;
  private readonly peers = new Map<NodeId, PeerStatus>();
  private readonly timers: NodeJS.Timeout[] = [];
  private cpuSample = os.cpus().map((c) => c.times);
  private cpuPercent = 0;
  private background: Promise<unknown> = Promise.resolve();
  private stopping = false;

  constructor(config: Config, logger: Logger, clock: Clock = systemClock) {
    this.config = config;
    this.logger = logger;
    this.clock = clock;
    this.store = new RepoStore(config.dataDir);
    this.client = new PeerClient({ secret: config.clusterSecret, requestTimeoutMs: config.peerTimeoutMs });
    this.driver = new TxnDriver({
      self: config.selfUrl,
      peers: config.peerUrls,
      quorum: config.quorum,
      log: new TxnLog(config.dataDir),
      store: this.store,
      client: this.client,
      logger,
      clock,
      newTxnId: () => `${config.serverId}-${clock.now().toString(36)}-${randomBytes(6).toString('hex')}`,
      timeouts: { prepareTimeoutMs: config.prepareTimeoutMs, commitTimeoutMs: config.commitTimeoutMs, commitResends: config.commitResends },
    });
    this.gitHttp = new GitHttp((repoId) => this.store.repoPath(repoId), logger);
    for (const url of config.peerUrls) this.peers.set(url, { url, server_id: null, reachable: false, last_seen: null });
    this.server = http.createServer({ requestTimeout: 0, keepAliveTimeout: 5_000 }, (req, res) => this.handle(req, res));
    // Long pushes and clones must not be cut off; idle sockets are still reaped by keepAliveTimeout.
    this.server.timeout = 0;
  }

  get url(): string {
    return this.config.selfUrl;
  }

  async start(): Promise<void> {
    await this.driver.start();
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.config.port, this.config.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.logger.info('node listening', { url: this.url, peers: this.config.peerUrls, quorum: this.config.quorum, data_dir: this.config.dataDir });
    this.every(this.config.heartbeatIntervalMs, () => this.heartbeat());
    this.every(this.config.syncIntervalMs, () => this.catchUp());
    this.every(1000, async () => this.sampleCpu());
  }

  /** Runs `task` now and then every `ms`, never two at once. */
  private every(ms: number, task: () => Promise<unknown>): void {
    let running = false;
    const tick = (): void => {
      if (running || this.stopping) return;
      running = true;
      const done = task()
        .catch((err) => this.logger.warn('background task failed', { err: (err as Error).message }))
        .finally(() => (running = false));
      this.background = Promise.all([this.background, done]);
    };
    tick();
    this.timers.push(setInterval(tick, ms));
  }

  private async catchUp(): Promise<void> {
    await this.driver.resolveInDoubtOnce();
    await this.driver.syncOnce();
  }

  private async heartbeat(): Promise<void> {
    await Promise.all(
      [...this.peers.values()].map(async (peer) => {
        try {
          const info = await this.client.ping(peer.url, Math.min(this.config.heartbeatIntervalMs, 1000));
          peer.server_id = info.server_id;
          peer.reachable = true;
          peer.last_seen = new Date(this.clock.now()).toISOString();
        } catch {
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
    for (const t of this.timers) clearInterval(t);
    this.gitHttp.killAll();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
    await this.background.catch(() => undefined);
    this.client.close();
    this.logger.info('node stopped');
  }

  // ---------------------------------------------------------------------------------------------

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const incoming = req.headers[REQUEST_ID_HEADER];
    const requestId = typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    res.setHeader(REQUEST_ID_HEADER, requestId);
    const log = this.logger.child({ request_id: requestId });
    const started = this.clock.now();
    res.once('finish', () => {
      log.info('request', { method: req.method, path: (req.url ?? '').split('?')[0], status: res.statusCode, ms: this.clock.now() - started });
    });
    req.on('error', (err) => log.debug('request stream error', { err: err.message }));
    this.dispatch(req, res, requestId, log).catch((err) => this.fail(res, err, log));
  }

  private fail(res: http.ServerResponse, err: unknown, log: Logger): void {
    const known = isQuorumGitError(err) ? err : new QuorumGitError('internal', 'internal error', { cause: err });
    if (known.code === 'internal') log.error('request failed', { err });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    this.send(res, statusByCode[known.code], errorBody(known));
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

  private async dispatch(req: http.IncomingMessage, res: http.ServerResponse, requestId: string, log: Logger): Promise<void> {
    const target: Route = route(req.method ?? 'GET', req.url ?? '/');
    if (target.kind.startsWith('internal')) this.authorizePeer(req);
    switch (target.kind) {
      case 'health':
        return this.send(res, 200, this.health());
      case 'listRepos': {
        const repos = this.driver.participant.liveRepos();
        return this.send(res, 200, { repos, count: repos.length });
      }
      case 'getRepo': {
        if (!this.driver.participant.isLive(target.repoId)) {
          const err = new QuorumGitError('repo_not_found', `repository ${target.repoId} does not exist`);
          return this.send(res, 404, { repo_id: target.repoId, exists: false, ...errorBody(err) });
        }
        return this.send(res, 200, { repo_id: target.repoId, exists: true, path: this.store.repoPath(target.repoId) });
      }
      case 'createRepo': {
        const body = await this.readJson(req);
        const repoId = this.repoIdFromBody(body);
        if (this.driver.participant.isLive(repoId)) throw new QuorumGitError('repo_exists', `repository ${repoId} already exists`);
        return this.replicate({ kind: 'create', repoId }, requestId, res);
      }
      case 'deleteRepo':
        if (!this.driver.participant.isLive(target.repoId)) {
          throw new QuorumGitError('repo_not_found', `repository ${target.repoId} does not exist`);
        }
        return this.replicate({ kind: 'delete', repoId: target.repoId }, requestId, res);
      case 'internalPing':
        return this.send(res, 200, { server_id: this.config.serverId, url: this.url });
      case 'internalCatalog':
        return this.send(res, 200, { repos: this.driver.participant.catalog() });
      case 'internalTxn': {
        const msg = (await this.readJson(req)) as TxnMessage;
        const expected = target.step === 'prepare' ? 'prepare' : target.step === 'commit' ? 'commitTxn' : 'abortTxn';
        if (typeof msg !== 'object' || msg === null || msg.type !== expected || typeof msg.txnId !== 'string') {
          throw new QuorumGitError('invalid_body', `expected a ${expected} message`);
        }
        log.debug('txn message', { txn_id: msg.txnId, type: msg.type });
        return this.send(res, 200, await this.driver.handleMessage(msg));
      }
      case 'internalQuery':
        return this.send(res, 200, await this.driver.handleQuery(target.txnId, target.refuse, target.asCoordinator));
      case 'gitInfoRefs':
      case 'gitRpc': {
        // Existence is decided by the catalog, and a repo locked by a transaction (being deleted or
        // created) is not served until the outcome is known.
        const repoId = target.repoId;
        if (!this.driver.participant.isLive(repoId) || !(await this.store.exists(repoId))) {
          throw new QuorumGitError('repo_not_found', 'repository not found');
        }
        if (target.kind === 'gitInfoRefs') return this.gitHttp.infoRefs(req, res, repoId, target.service);
        return this.gitHttp.rpc(req, res, repoId, target.service, log);
      }
      case 'createRepo' as never:
        return;
    }
  }

  private async replicate(op: TxnOp, requestId: string, res: http.ServerResponse): Promise<void> {
    // Two coordinators that lock the same name on different nodes can both lose (repo_busy) when no
    // third node breaks the tie; each retries after a random pause, and the second attempt of the
    // loser then finds the winner's repo (repo_exists).
    let result = await this.driver.runTxn(op, requestId);
    for (let attempt = 1; attempt <= BUSY_RETRIES && result.outcome === 'aborted' && result.code === 'repo_busy'; attempt += 1) {
      await new Promise((resolve) => setTimeout(resolve, randomInt(BUSY_BACKOFF_MS * attempt, BUSY_BACKOFF_MS * attempt * 3)));
      result = await this.driver.runTxn(op, requestId);
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
        case 'quorum_unreachable':
          throw new QuorumGitError(
            'quorum_unreachable',
            `could not reach a quorum of ${this.config.quorum} of ${this.driver.nodes.length} nodes; failed: ${result.failed.join(', ') || 'none'}. Nothing was changed.`,
            { details: { failed_peers: failedPeers, quorum: this.config.quorum } },
          );
      }
    }
    const confirmedPeers = result.confirmed.filter((n) => n !== this.url);
    if (op.kind === 'delete') return this.send(res, 204);
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

  private repoIdFromBody(body: unknown): string {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new QuorumGitError('invalid_body', 'the body must be a JSON object like {"repo_id": "owner/name"}');
    }
    const unknownKeys = Object.keys(body).filter((k) => k !== 'repo_id');
    if (unknownKeys.length > 0) throw new QuorumGitError('invalid_body', `unknown field(s): ${unknownKeys.join(', ')}`);
    if (!('repo_id' in body)) throw new QuorumGitError('invalid_body', 'repo_id is required');
    const id = parseRepoId((body as { repo_id: unknown }).repo_id);
    return `${id.owner}/${id.name}`;
  }

  private authorizePeer(req: http.IncomingMessage): void {
    const given = Buffer.from(String(req.headers[SECRET_HEADER] ?? ''));
    const expected = Buffer.from(this.config.clusterSecret);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new QuorumGitError('unauthorized', 'internal API: missing or wrong cluster secret');
    }
  }

  private readJson(req: http.IncomingMessage): Promise<unknown> {
    const limit = this.config.maxBodyBytes;
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
        if (failed) return;
        const text = Buffer.concat(chunks).toString('utf8');
        try {
          resolve(JSON.parse(text));
        } catch {
          reject(new QuorumGitError('invalid_json', 'the body is not valid JSON'));
        }
      });
      req.on('error', (err) => reject(new QuorumGitError('invalid_body', 'the request body could not be read', { cause: err })));
    });
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
    };
  }
}
