import { REQUEST_ID_HEADER, SECRET_HEADER } from '../base/headers.js';
import { createReadStream } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import got, { type Got } from 'got';
import { systemClock, type Clock } from '../base/clock.js';
import { parseCatalog, parsePeerInfo, parseQueryAnswer, parseRepoState, parseVote } from './internal-messages.js';
import type { Logger } from '../base/logger.js';
import type { CatalogEntry, NodeId, QueryAnswer, TxnMessage, Vote } from '../core/txn-core.js';

// The node-to-node transport: JSON over HTTP(S) to a peer's /internal API, authenticated with the
// cluster secret, naming the sending node, and carrying the request id of the client request that
// caused it. Every answer is checked (lib/cluster/internal-messages.ts) before anyone acts on it: a malformed
// one counts as no answer. No retries here: the protocol decides what a lost message means.

/** The sending node's URL (its PUBLIC_URL); a node takes 2PC messages only from its configured peers. */
export const NODE_HEADER = 'x-quorum-node';
export const PACK_UPLOAD_TIMEOUT_MS = 60 * 60_000;
/** On a pack upload with no body: take the pack staged under this id instead (adoptStagedPack). */
export const STAGED_PACK_HEADER = 'x-quorum-staged-pack';

/**
 * Node-to-node connections are kept alive. A connection idle for as long as the server keeps it is
 * closed by the server, and a request sent on it at that moment is reset; so a client drops its idle
 * connections well before the server would (KEEP_ALIVE_TIMEOUT_MS is the nodes' server setting).
 */
export const KEEP_ALIVE_TIMEOUT_MS = 10_000;
export const IDLE_SOCKET_MS = 4_000;

/** A keep-alive agent for talking to other nodes (this client, and the proxy of git requests). */
export function peerAgent(maxSockets: number): http.Agent {
  // `timeout` ends sockets that sit idle in the pool; on a busy one it only emits an event nobody acts on.
  return new http.Agent({ keepAlive: true, maxSockets, timeout: IDLE_SOCKET_MS });
}

/** The same for https:// peers; `ca` (TLS_CA) replaces the system's roots when given. */
export function peerHttpsAgent(maxSockets: number, ca?: Buffer): https.Agent {
  return new https.Agent({ keepAlive: true, maxSockets, timeout: IDLE_SOCKET_MS, ...(ca ? { ca } : {}) });
}

export interface PeerClientOptions {
  secret: string;
  requestTimeoutMs: number;
  /** The node's clock (default the system's); times the JSON requests' answers. */
  clock?: Clock;
  /** This node's URL, sent in NODE_HEADER; absent for the operator tools, which are no node. */
  self?: NodeId;
  /** TLS_CA: the CA(s) https:// peers' certificates must chain to. */
  ca?: Buffer;
  /** Told about catalog entries dropped as implausible. */
  logger?: Logger;
}

export interface RepoStateAnswer {
  repo_id: string;
  live: boolean;
  epoch: number;
  generation: number;
  refs?: Record<string, string>;
  head?: string;
  digest?: string;
}

export interface PeerInfo {
  server_id: string;
  url: string;
}

/** The answer of GET /internal/node. */
export interface NodeInfo {
  server_id: string;
  url: string;
  /** Every node of the cluster as this node is configured, itself first. */
  nodes: string[];
  quorum: number;
  /** The first recovery round since start (in-doubt resolution, catalog sync) has run. */
  recovered: boolean;
  /** Transactions prepared here whose outcome this node does not know yet. */
  in_doubt: number;
  /** Live repos in this node's catalog. */
  repos: number;
  /** Nodes the operator declared dead for good (`quorum-git node declare-dead`). */
  dead: string[];
  /** No repo and no transaction: a node on an empty data dir, which may be readmitted. */
  empty: boolean;
}

export class PeerClient {
  private readonly got: Got;
  private readonly agent: http.Agent;
  private readonly httpsAgent: https.Agent;
  private readonly idleTimeoutMs: number;
  private readonly clock: Clock;
  private readonly headers: Record<string, string>;
  private readonly logger: Logger | undefined;

  constructor(options: PeerClientOptions) {
    this.clock = options.clock ?? systemClock;
    this.idleTimeoutMs = options.requestTimeoutMs;
    this.headers = { [SECRET_HEADER]: options.secret, ...(options.self === undefined ? {} : { [NODE_HEADER]: options.self }) };
    this.logger = options.logger;
    this.agent = peerAgent(64);
    this.httpsAgent = peerHttpsAgent(64, options.ca);
    this.got = got.extend({
      headers: this.headers,
      timeout: { request: options.requestTimeoutMs },
      retry: { limit: 0 },
      agent: { http: this.agent, https: this.httpsAgent },
      ...(options.ca ? { https: { certificateAuthority: options.ca } } : {}),
    });
  }

  async sendTxn(node: NodeId, msg: TxnMessage & { inlineFiles?: Record<string, string> }, requestId: string, timeoutMs?: number): Promise<Vote> {
    const path = msg.type === 'prepare' ? 'prepare' : msg.type === 'commitTxn' ? 'commit' : 'abort';
    return parseVote(await this.requestJson<unknown>('POST', `${node}/internal/txn/${path}`, msg, requestId, timeoutMs));
  }

  async queryTxn(node: NodeId, txnId: string, opts: { refuse: boolean; asCoordinator: boolean; repoId?: string }): Promise<Omit<QueryAnswer, 'effects'>> {
    const answer = await this.got
      .get(`${node}/internal/txn/${encodeURIComponent(txnId)}`, {
        searchParams: { refuse: opts.refuse ? '1' : '0', coordinator: opts.asCoordinator ? '1' : '0', ...(opts.repoId === undefined ? {} : { repo: opts.repoId }) },
      })
      .json<unknown>();
    return parseQueryAnswer(answer);
  }

  /**
   * Streams one file of a push's pack to a peer, with node:http itself and 1 MiB reads: through got,
   * two peers' copies of a 20 MB pack took 170-240 ms against 115-140 ms so, on every large push's
   * critical path. A large pack takes as long as it takes (PACK_UPLOAD_TIMEOUT_MS); a stalled one is
   * cut after the idle timeout. Anything but 204 rejects.
   */
  async uploadPackFile(node: NodeId, txnId: string, file: string, requestId: string): Promise<void> {
    const url = `${node}/internal/push/${encodeURIComponent(txnId)}/${path.basename(file)}`;
    const headers = { [REQUEST_ID_HEADER]: requestId, 'content-type': 'application/octet-stream' };
    const writeBody = (req: http.ClientRequest): Promise<void> => pipeline(createReadStream(file, { highWaterMark: 1024 * 1024 }), req);
    const { status, text } = await this.exchange('PUT', url, headers, writeBody, { ms: PACK_UPLOAD_TIMEOUT_MS, what: 'not done' }, this.idleTimeoutMs);
    if (status !== 204) throw new Error(`PUT ${url}: HTTP ${status}: ${text.slice(0, 300)}`);
  }

  /**
   * Streams a push's pack to a peer while the client is still sending it (lib/cluster/pack-tee.ts):
   * resolves once the peer holds the whole stream, checked and fsynced, as stage `stageId`.
   */
  async stagePack(node: NodeId, stageId: string, body: Readable, requestId: string | undefined): Promise<void> {
    const url = `${node}/internal/stage/${stageId}`;
    const headers = { ...(requestId === undefined ? {} : { [REQUEST_ID_HEADER]: requestId }), 'content-type': 'application/octet-stream' };
    const { status, text } = await this.exchange('PUT', url, headers, (req) => pipeline(body, req), { ms: PACK_UPLOAD_TIMEOUT_MS, what: 'not done' }, this.idleTimeoutMs);
    if (status !== 204) throw new Error(`PUT ${url}: HTTP ${status}: ${text.slice(0, 300)}`);
  }

  /**
   * Asks a peer to take the pack it staged as `stageId` as this push's `file`, which it does only if
   * what it holds is that very pack (its checksum is the file's name). False: it holds no such pack.
   */
  async adoptStagedPack(node: NodeId, txnId: string, file: string, stageId: string, requestId: string): Promise<boolean> {
    const url = `${node}/internal/push/${encodeURIComponent(txnId)}/${path.basename(file)}`;
    const headers = { [REQUEST_ID_HEADER]: requestId, [STAGED_PACK_HEADER]: stageId, 'content-length': 0 };
    const { status, text } = await this.exchange('PUT', url, headers, (req) => void req.end(), { ms: this.idleTimeoutMs, what: 'no answer' });
    if (status === 204) return true;
    if (status === 404) return false;
    throw new Error(`PUT ${url}: HTTP ${status}: ${text.slice(0, 300)}`);
  }

  /** Tells a peer to drop a stage it holds (the push is over and did not take it); a failure is only logged. */
  async dropStagedPack(node: NodeId, stageId: string, requestId: string | undefined): Promise<void> {
    const url = `${node}/internal/stage/${stageId}`;
    const headers = requestId === undefined ? {} : { [REQUEST_ID_HEADER]: requestId };
    try {
      const { status, text } = await this.exchange('DELETE', url, headers, (req) => void req.end(), { ms: this.idleTimeoutMs, what: 'no answer' });
      if (status !== 204) throw new Error(`DELETE ${url}: HTTP ${status}: ${text.slice(0, 300)}`);
    } catch (err) {
      this.logger?.debug('a peer did not drop a streamed pack; its sweep will', { peer: node, stage: stageId, err: (err as Error).message });
    }
  }

  /** A replica's version of one repo (and its refs, for catch-up). */
  async repoState(node: NodeId, repoId: string, want: { refs?: boolean; digest?: boolean }, timeoutMs?: number, requestId?: string): Promise<RepoStateAnswer> {
    const query = `refs=${want.refs ? '1' : '0'}&digest=${want.digest ? '1' : '0'}`;
    return parseRepoState(await this.requestJson<unknown>('GET', `${node}/internal/repo-state/${repoId}?${query}`, undefined, requestId, timeoutMs), repoId);
  }

  async catalog(node: NodeId): Promise<Record<string, CatalogEntry>> {
    return this.checkedCatalog(node, await this.got.get(`${node}/internal/catalog`).json<unknown>());
  }

  /** A catalog for a read (the management API's list): the fast path, with the read check's timeout. */
  async readCatalog(node: NodeId, timeoutMs: number, requestId?: string): Promise<Record<string, CatalogEntry>> {
    return this.checkedCatalog(node, await this.requestJson<unknown>('GET', `${node}/internal/catalog`, undefined, requestId, timeoutMs));
  }

  /** A peer's catalog without the entries no honest node could hold (bad id, implausible version, unknown state). */
  private checkedCatalog(node: NodeId, answer: unknown): Record<string, CatalogEntry> {
    const { repos, dropped } = parseCatalog(answer);
    if (dropped.length > 0) this.logger?.warn('dropped implausible catalog entries from a peer', { peer: node, count: dropped.length, entries: dropped.slice(0, 5) });
    return repos;
  }

  /** What a node says about itself, for the operator tools (`quorum-git status`, `verify`). */
  async nodeInfo(node: NodeId, timeoutMs: number): Promise<NodeInfo> {
    return this.requestJson<NodeInfo>('GET', `${node}/internal/node`, undefined, undefined, timeoutMs);
  }

  /** The operator's declaration that `member` is dead for good (or readmitted), sent to one node. */
  async setMembership(node: NodeId, member: NodeId, dead: boolean, timeoutMs: number): Promise<{ dead: NodeId[] }> {
    return this.requestJson<{ dead: NodeId[] }>('POST', `${node}/internal/membership`, { node: member, dead }, undefined, timeoutMs);
  }

  async ping(node: NodeId, timeoutMs: number): Promise<PeerInfo> {
    return parsePeerInfo(await this.got.get(`${node}/internal/ping`, { timeout: { request: timeoutMs } }).json<unknown>());
  }

  /**
   * One JSON request with node:http itself, for the messages every push and every read sends (the
   * 2PC and the freshness check): got's own work per request measured ~0.4 ms on the bench machine
   * against ~0.05 ms here, several times on each push's critical path. A non-200 answer, a bad body
   * or the timeout (for the whole exchange) rejects.
   */
  private async requestJson<T>(method: 'GET' | 'POST', url: string, body: unknown, requestId: string | undefined, timeoutMs = this.idleTimeoutMs): Promise<T> {
    try {
      return await this.requestJsonOnce<T>(method, url, body, requestId, timeoutMs);
    } catch (err) {
      // A kept-alive connection the peer closed just as we sent on it: the request never got there.
      // Every message sent this way is idempotent, so it is sent once more, on a new connection.
      if ((err as { reusedSocket?: boolean }).reusedSocket && (err as NodeJS.ErrnoException).code === 'ECONNRESET') {
        return this.requestJsonOnce<T>(method, url, body, requestId, timeoutMs);
      }
      throw err;
    }
  }

  private async requestJsonOnce<T>(method: 'GET' | 'POST', url: string, body: unknown, requestId: string | undefined, timeoutMs: number): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: http.OutgoingHttpHeaders = { accept: 'application/json' };
    if (requestId !== undefined) headers[REQUEST_ID_HEADER] = requestId;
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    const { status, text } = await this.exchange(method, url, headers, (req) => void req.end(payload), { ms: timeoutMs, what: 'no answer' });
    if (status !== 200) throw new Error(`${method} ${url}: HTTP ${status}: ${text.slice(0, 300)}`);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new Error(`${method} ${url}: answer is not JSON`);
    }
  }

  /**
   * One request with node:http itself, on the node's agents: the answer's status and text, or a
   * rejection on a network error (marked `reusedSocket` when a kept-alive connection failed under it),
   * once `timeout.ms` is spent, or once the socket is idle for `idleMs`. `writeBody` sends the body
   * and ends the request.
   */
  private exchange(
    method: string,
    url: string,
    headers: http.OutgoingHttpHeaders,
    writeBody: (req: http.ClientRequest) => void | Promise<void>,
    timeout: { ms: number; what: string },
    idleMs?: number,
  ): Promise<{ status: number; text: string }> {
    const clock = this.clock;
    return new Promise((resolve, reject) => {
      const secure = url.startsWith('https:');
      const req = (secure ? https : http).request(url, { method, headers: { ...this.headers, ...headers }, agent: secure ? this.httpsAgent : this.agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', fail);
        res.on('end', () => {
          clock.clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
        });
      });
      function fail(err: Error): void {
        clock.clearTimeout(timer);
        reject(Object.assign(err, { reusedSocket: req.reusedSocket }));
      }
      const timer = clock.setTimeout(() => req.destroy(new Error(`${method} ${url}: ${timeout.what} within ${timeout.ms} ms`)), timeout.ms);
      if (idleMs !== undefined) req.setTimeout(idleMs, () => req.destroy(new Error(`${method} ${url}: idle for ${idleMs} ms`)));
      req.on('error', fail);
      Promise.resolve(writeBody(req)).catch((err: Error) => req.destroy(err));
    });
  }

  close(): void {
    this.agent.destroy();
    this.httpsAgent.destroy();
  }
}
