import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Clock } from '../base/clock.js';
import type { Config } from '../base/config.js';
import { REQUEST_ID_HEADER } from '../base/headers.js';
import { PROC_RECEIVE_PATH } from '../git/hooks.js';
import { PROC_RECEIVE_UPGRADE } from '../git/proc-receive.js';
import type { Logger } from '../base/logger.js';
import type { NodeMetrics } from '../base/metrics.js';
import { KEEP_ALIVE_TIMEOUT_MS } from '../cluster/peer-client.js';
import { QuorumGitError, errorBody, isQuorumGitError, statusByCode } from '../core/errors.js';
import type { Caller, Callers, Gate, RequestContext } from './authz.js';
import { PROXIED_HEADER, type GitGateway } from './git-gateway.js';
import { ConnectionCap, EXEMPT_REFRESH_MS, clusterAddresses } from './connection-cap.js';
import { clientAddress, trustedProxyCheck, type TrustedCheck } from './git-rpc.js';
import type { Health, Readiness } from './health.js';
import { isPeer, type InternalApi } from './internal-api.js';
import { send } from './io.js';
import type { ManagementApi } from './management-api.js';
import { requestIdFrom } from './request-id.js';
import { route, type Route } from './router.js';

// The node's HTTP app: the server (and, with TLS, the pre-receive hook's plain loopback listener),
// a request id on every request, the Gate before any handler, routing to the health answers, the
// management API, the internal API and the git gateway, and the one mapping of errors to answers
// (`{ "error": { "code", "message" } }`, or a plain line for git).

export interface HttpAppOptions {
  config: Pick<Config, 'serverId' | 'clusterSecret' | 'tls' | 'peerUrls' | 'maxConnectionsPerClient' | 'trustedProxies'>;
  logger: Logger;
  clock: Clock;
  metrics: Pick<NodeMetrics, 'observeRequest' | 'errorAnswered' | 'respond'>;
  /** The node's gate (replaced at start when AUTH_FILE is set). */
  gate: () => Gate;
  callers: Callers;
  health: Health;
  readiness: () => Readiness;
  management: ManagementApi;
  internal: InternalApi;
  gateway: GitGateway;
}

export class HttpApp {
  private readonly options: HttpAppOptions;
  private readonly server: http.Server;
  /**
   * With TLS, the pre-receive hook (bash over /dev/tcp, no TLS) reaches its node on this plain
   * listener, bound to loopback on a port of its own and serving the hook's route only.
   */
  private readonly hookServer: http.Server | undefined;
  /** The next refresh of the addresses the connection cap leaves alone (lib/http/connection-cap.ts). */
  private refreshTimer: unknown;
  private closed = false;
  /** Connections upgraded to the proc-receive protocol: the servers no longer track them, close() does. */
  private readonly upgraded = new Set<Duplex>();
  /** TRUSTED_PROXIES: whose x-forwarded-for names the client (and whose connections are not capped). */
  private readonly trustedProxy: TrustedCheck;

  constructor(options: HttpAppOptions) {
    this.options = options;
    const { config } = options;
    this.trustedProxy = trustedProxyCheck(config.trustedProxies);
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
    for (const server of [this.server, this.hookServer]) server?.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head));
  }

  /** The pre-receive hook has a listener of its own (with TLS). */
  get hasHookListener(): boolean {
    return this.hookServer !== undefined;
  }

  /** Starts the hook's listener on a port the system chooses, and resolves with that port. */
  listenHook(host: string): Promise<number> {
    return listen(this.hookServer!, 0, host);
  }

  async listen(port: number, host: string): Promise<void> {
    const { config, logger, clock } = this.options;
    const cap = new ConnectionCap(config.maxConnectionsPerClient, logger, clock, this.trustedProxy);
    if (config.maxConnectionsPerClient > 0) {
      const refresh = async (): Promise<void> => {
        cap.setExempt(await clusterAddresses(config.peerUrls));
        if (!this.closed) this.refreshTimer = clock.setTimeout(() => void refresh(), EXEMPT_REFRESH_MS);
      };
      await refresh();
    }
    this.server.on('connection', (socket: Socket) => cap.admit(socket));
    await listen(this.server, port, host);
  }

  /** Closes the listeners and every connection, and resolves once they are closed. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.refreshTimer !== undefined) this.options.clock.clearTimeout(this.refreshTimer);
    const closed = [this.server, this.hookServer].filter((s) => s !== undefined).map((server) => {
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      return done;
    });
    for (const socket of this.upgraded) socket.destroy();
    await Promise.all(closed);
  }

  /**
   * An HTTP upgrade: only the proc-receive hook's (lib/git/proc-receive.ts), with the cluster secret,
   * is served; anything else gets its error answer and the connection is closed.
   */
  private upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const { logger, clock, internal } = this.options;
    const requestId = requestIdFrom(req.headers[REQUEST_ID_HEADER]);
    const log = logger.child({ request_id: requestId });
    const started = clock.now();
    const path = (req.url ?? '').split('?')[0];
    socket.on('error', (err) => log.debug('upgraded connection error', { err: err.message }));
    try {
      const target = route(req.method ?? 'GET', req.url ?? '/');
      const wanted = String(req.headers.upgrade ?? '').toLowerCase() === PROC_RECEIVE_UPGRADE;
      if (target.kind !== 'internalHook' || target.hook !== 'proc-receive' || !wanted) throw new QuorumGitError('not_found', `no upgrade is served here but ${PROC_RECEIVE_UPGRADE} on ${PROC_RECEIVE_PATH}`);
      internal.authorizePeer(req);
    } catch (err) {
      const known = isQuorumGitError(err) ? err : new QuorumGitError('internal', 'internal error', { cause: err });
      if (known.code === 'internal') log.error('upgrade failed', { err });
      this.options.metrics.errorAnswered(known.code);
      const status = statusByCode[known.code];
      const body = JSON.stringify(errorBody(known));
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      log.info('request', { method: req.method, path, status, ms: clock.now() - started });
      return;
    }
    this.upgraded.add(socket);
    socket.once('close', () => this.upgraded.delete(socket));
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: ${PROC_RECEIVE_UPGRADE}\r\n${REQUEST_ID_HEADER}: ${requestId}\r\n\r\n`);
    internal.serveProcReceive(req, socket, head).then(
      () => log.info('request', { method: req.method, path, status: 101, ms: clock.now() - started }),
      (err: Error) => log.warn('proc-receive exchange failed', { err: err.message }),
    );
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse, hookOnly = false): void {
    const { logger, clock, metrics } = this.options;
    // The client's id if it is safe (lib/http/request-id.ts): on the response, every log line, every peer call.
    const requestId = requestIdFrom(req.headers[REQUEST_ID_HEADER]);
    res.setHeader(REQUEST_ID_HEADER, requestId);
    metrics.observeRequest(req, res);
    const log = logger.child({ request_id: requestId });
    const started = clock.now();
    res.once('finish', () => {
      log.info('request', { method: req.method, path: (req.url ?? '').split('?')[0], status: res.statusCode, ms: clock.now() - started });
    });
    req.on('error', (err) => log.debug('request stream error', { err: err.message }));
    this.dispatch(req, res, requestId, log, hookOnly).catch((err) => this.fail(res, err, log));
  }

  /** Answers with the error: its code's status and `{ error: { code, message } }` (git gets a plain line); an unknown error is a logged 500. */
  fail(res: http.ServerResponse, err: unknown, log: Logger): void {
    const known = isQuorumGitError(err) ? err : new QuorumGitError('internal', 'internal error', { cause: err });
    if (known.code === 'internal') log.error('request failed', { err });
    this.options.metrics.errorAnswered(known.code);
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
    send(res, status, errorBody(known));
  }

  private async dispatch(req: http.IncomingMessage, res: http.ServerResponse, requestId: string, log: Logger, hookOnly: boolean): Promise<void> {
    const { config, internal, management, gateway } = this.options;
    const target: Route = route(req.method ?? 'GET', req.url ?? '/');
    if (hookOnly && target.kind !== 'internalHook') throw new QuorumGitError('not_found', 'this listener serves the git hooks only');
    if (target.kind.startsWith('internal')) internal.authorizePeer(req);
    // Messages that change state come from a configured peer that names itself; any other internal
    // request (the operator tools, the hook) may name no node, but never a wrong one.
    const sender = target.kind.startsWith('internal') ? internal.senderOf(req, target.kind === 'internalTxn' || target.kind === 'internalPackUpload' || target.kind === 'internalPackStage') : undefined;
    const fromPeer = isPeer(req, config.clusterSecret);
    const ctx: RequestContext = {
      log,
      requestId,
      client: clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], fromPeer, this.trustedProxy),
      method: req.method ?? 'GET',
      path: (req.url ?? '').split('?')[0]!,
    };
    let caller: Caller;
    try {
      caller = await this.options.gate().authorize(req, res, target, ctx, fromPeer && req.headers[PROXIED_HEADER] !== '1');
    } catch (err) {
      // A repo the caller may not see reads exactly like one that does not exist.
      if (target.kind === 'getRepo' && isQuorumGitError(err) && err.code === 'repo_not_found') return management.sendRepoNotFound(res, target.repoId);
      throw err;
    }
    this.options.callers.set(req, { caller, ctx });
    switch (target.kind) {
      case 'health':
        return send(res, 200, this.options.health.report());
      case 'healthLive':
        return send(res, 200, { status: 'live', server_id: config.serverId });
      case 'healthReady':
        return this.ready(res);
      case 'metrics':
        // Open like /health (README, Metrics): counts and states, no repo names or secrets.
        return this.options.metrics.respond(res);
      case 'listRepos':
      case 'getRepo':
      case 'createRepo':
      case 'deleteRepo':
      case 'updateRepoSettings':
        return management.serve(target, req, res, requestId);
      case 'internalPing':
      case 'internalCatalog':
      case 'internalNode':
      case 'internalMembership':
      case 'internalTxn':
      case 'internalQuery':
      case 'internalHook':
      case 'internalPackUpload':
      case 'internalPackStage':
      case 'internalRepoState':
        return internal.serve(target, req, res, sender, requestId, log);
      case 'gitInfoRefs':
      case 'gitRpc':
        return gateway.serveGit(req, res, target.repoId, target.service, target.kind, log);
    }
  }

  /** GET /health/ready: 200 once recovered with a write quorum reachable, else 503 saying why. */
  private ready(res: http.ServerResponse): void {
    const { ready, reasons } = this.options.readiness();
    if (ready) return send(res, 200, { status: 'ready', server_id: this.options.config.serverId });
    const err = new QuorumGitError('not_ready', `not ready: ${reasons.join('; ')}`, { details: { reasons } });
    send(res, statusByCode[err.code], errorBody(err));
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
