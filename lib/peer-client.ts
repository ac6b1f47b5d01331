import { createReadStream } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import got, { type Got } from 'got';
import type { CatalogEntry, NodeId, QueryOutcome, TxnMessage, Vote } from './txn-core.js';

// The node-to-node transport: JSON over HTTP to a peer's /internal API, authenticated with the
// cluster secret and carrying the request id of the client request that caused it. No retries here:
// the protocol decides what a lost message means.

export const SECRET_HEADER = 'x-quorum-secret';
export const REQUEST_ID_HEADER = 'x-request-id';
export const PACK_UPLOAD_TIMEOUT_MS = 60 * 60_000;

export interface PeerClientOptions {
  secret: string;
  requestTimeoutMs: number;
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

export class PeerClient {
  private readonly got: Got;
  private readonly agent: http.Agent;
  private readonly idleTimeoutMs: number;

  constructor(options: PeerClientOptions) {
    this.idleTimeoutMs = options.requestTimeoutMs;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
    this.got = got.extend({
      headers: { [SECRET_HEADER]: options.secret },
      timeout: { request: options.requestTimeoutMs },
      retry: { limit: 0 },
      agent: { http: this.agent },
    });
  }

  async sendTxn(node: NodeId, msg: TxnMessage & { inlineFiles?: Record<string, string> }, requestId: string, timeoutMs?: number): Promise<Vote> {
    const path = msg.type === 'prepare' ? 'prepare' : msg.type === 'commitTxn' ? 'commit' : 'abort';
    return this.got
      .post(`${node}/internal/txn/${path}`, {
        json: msg,
        headers: { [REQUEST_ID_HEADER]: requestId },
        ...(timeoutMs === undefined ? {} : { timeout: { request: timeoutMs } }),
      })
      .json<Vote>();
  }

  async queryTxn(node: NodeId, txnId: string, opts: { refuse: boolean; asCoordinator: boolean }): Promise<{ outcome: QueryOutcome; epoch?: number; generation?: number }> {
    return this.got
      .get(`${node}/internal/txn/${encodeURIComponent(txnId)}`, {
        searchParams: { refuse: opts.refuse ? '1' : '0', coordinator: opts.asCoordinator ? '1' : '0' },
      })
      .json<{ outcome: QueryOutcome; epoch?: number; generation?: number }>();
  }

  /** Streams one pack file of a push to a peer, ahead of the prepare (never buffered whole). */
  async uploadPackFile(node: NodeId, txnId: string, file: string, requestId: string): Promise<void> {
    await this.got.put(`${node}/internal/push/${encodeURIComponent(txnId)}/${path.basename(file)}`, {
      body: createReadStream(file),
      headers: { [REQUEST_ID_HEADER]: requestId, 'content-type': 'application/octet-stream' },
      // A large pack takes as long as it takes; a stalled one is cut after the idle timeout.
      timeout: { request: PACK_UPLOAD_TIMEOUT_MS, socket: this.idleTimeoutMs },
    });
  }

  /** A replica's version of one repo (and its refs, for catch-up). */
  async repoState(node: NodeId, repoId: string, want: { refs?: boolean; digest?: boolean }, timeoutMs?: number, requestId?: string): Promise<RepoStateAnswer> {
    return this.got
      .get(`${node}/internal/repo-state/${repoId}`, {
        searchParams: { refs: want.refs ? '1' : '0', digest: want.digest ? '1' : '0' },
        ...(requestId === undefined ? {} : { headers: { [REQUEST_ID_HEADER]: requestId } }),
        ...(timeoutMs === undefined ? {} : { timeout: { request: timeoutMs } }),
      })
      .json<RepoStateAnswer>();
  }

  async catalog(node: NodeId): Promise<Record<string, CatalogEntry>> {
    const body = await this.got.get(`${node}/internal/catalog`).json<{ repos: Record<string, CatalogEntry> }>();
    return body.repos;
  }

  async ping(node: NodeId, timeoutMs: number): Promise<PeerInfo> {
    return this.got.get(`${node}/internal/ping`, { timeout: { request: timeoutMs } }).json<PeerInfo>();
  }

  close(): void {
    this.agent.destroy();
  }
}
