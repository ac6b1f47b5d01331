import http from 'node:http';
import got, { type Got } from 'got';
import type { CatalogEntry, NodeId, QueryOutcome, TxnMessage, Vote } from './txn-core.js';

// The node-to-node transport: JSON over HTTP to a peer's /internal API, authenticated with the
// cluster secret and carrying the request id of the client request that caused it. No retries here:
// the protocol decides what a lost message means.

export const SECRET_HEADER = 'x-quorum-secret';
export const REQUEST_ID_HEADER = 'x-request-id';

export interface PeerClientOptions {
  secret: string;
  requestTimeoutMs: number;
}

export interface PeerInfo {
  server_id: string;
  url: string;
}

export class PeerClient {
  private readonly got: Got;
  private readonly agent: http.Agent;

  constructor(options: PeerClientOptions) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
    this.got = got.extend({
      headers: { [SECRET_HEADER]: options.secret },
      timeout: { request: options.requestTimeoutMs },
      retry: { limit: 0 },
      agent: { http: this.agent },
    });
  }

  async sendTxn(node: NodeId, msg: TxnMessage, requestId: string, timeoutMs?: number): Promise<Vote> {
    const path = msg.type === 'prepare' ? 'prepare' : msg.type === 'commitTxn' ? 'commit' : 'abort';
    return this.got
      .post(`${node}/internal/txn/${path}`, {
        json: msg,
        headers: { [REQUEST_ID_HEADER]: requestId },
        ...(timeoutMs === undefined ? {} : { timeout: { request: timeoutMs } }),
      })
      .json<Vote>();
  }

  async queryTxn(node: NodeId, txnId: string, opts: { refuse: boolean; asCoordinator: boolean }): Promise<{ outcome: QueryOutcome; epoch?: number }> {
    return this.got
      .get(`${node}/internal/txn/${encodeURIComponent(txnId)}`, {
        searchParams: { refuse: opts.refuse ? '1' : '0', coordinator: opts.asCoordinator ? '1' : '0' },
      })
      .json<{ outcome: QueryOutcome; epoch?: number }>();
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
