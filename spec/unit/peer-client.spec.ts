import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../../lib/base/logger.js';
import { IDLE_SOCKET_MS, KEEP_ALIVE_TIMEOUT_MS, NODE_HEADER, PeerClient } from '../../lib/cluster/peer-client.js';

// The node-to-node client keeps connections alive. A peer that closes an idle connection just as a
// message is sent on it resets that request; the client must neither report the peer unreachable
// for it nor keep connections longer than the peer does.

describe('peer client connections', () => {
  let server: http.Server;
  let url: string;
  let client: PeerClient;
  let requests: number;
  let resetNext: boolean;

  beforeEach(async () => {
    requests = 0;
    resetNext = false;
    server = http.createServer((req, res) => {
      requests += 1;
      if (resetNext && req.socket.bytesWritten > 0) {
        // The second request on a kept-alive connection: drop it unanswered, as a peer closing an
        // idle connection at that very moment does.
        resetNext = false;
        req.socket.destroy();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ repo_id: 'o/r', live: true, epoch: 1, generation: requests }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    client = new PeerClient({ secret: 's', requestTimeoutMs: 2000 });
  });
  afterEach(async () => {
    client.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('sends a message again on a new connection when a kept-alive one is reset under it', async () => {
    expect((await client.repoState(url, 'o/r', {})).generation).to.equal(1);
    resetNext = true;
    const answer = await client.repoState(url, 'o/r', {});
    expect(resetNext, 'the reused connection was reset').to.equal(false);
    expect(answer.generation).to.equal(3);
  });

  it('still fails when a peer resets a new connection (no retry loop)', async () => {
    server.removeAllListeners('request');
    server.on('request', (req: http.IncomingMessage) => {
      requests += 1;
      req.socket.destroy();
    });
    const err = await client.repoState(url, 'o/r', {}).catch((e: Error) => e);
    expect(err).to.be.an('error');
    expect(requests).to.equal(1);
  });

  it('drops idle connections before a node would close them', () => {
    expect(IDLE_SOCKET_MS).to.be.below(KEEP_ALIVE_TIMEOUT_MS / 2);
  });
});

describe('peer client answers', () => {
  let server: http.Server;
  let url: string;
  let answer: unknown;
  let seen: http.IncomingHttpHeaders | undefined;

  before(async () => {
    server = http.createServer((req, res) => {
      seen = req.headers;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('drops and logs the catalog entries of a peer that no honest node could hold, and names itself', async () => {
    const warnings: unknown[][] = [];
    const logger = { warn: (...args: unknown[]) => warnings.push(args) } as unknown as Logger;
    const client = new PeerClient({ secret: 's', requestTimeoutMs: 2000, self: 'http://127.0.0.1:1', logger });
    answer = { repos: { 'a/ok': { state: 'live', epoch: 1, generation: 2 }, '../pwn': { state: 'live', epoch: 1, generation: 0 }, 'a/forged': { state: 'deleted', epoch: 2 ** 60, generation: 0 } } };
    try {
      for (const catalog of [await client.catalog(url), await client.readCatalog(url, 2000)]) {
        expect(catalog).to.deep.equal({ 'a/ok': { state: 'live', epoch: 1, generation: 2 } });
      }
      expect(seen?.[NODE_HEADER]).to.equal('http://127.0.0.1:1');
      expect(warnings).to.have.length(2);
      expect(JSON.stringify(warnings[0])).to.include('../pwn').and.include('a/forged');
    } finally {
      client.close();
    }
  });

  it('takes a malformed vote, query answer or repo state as no answer', async () => {
    const client = new PeerClient({ secret: 's', requestTimeoutMs: 2000 });
    try {
      answer = { vote: 'yes', epoch: 'many', generation: 0 };
      expect(await client.sendTxn(url, { type: 'abortTxn', txnId: 't' }, 'r').catch((e: Error) => e)).to.be.an('error');
      answer = { outcome: 'committed', epoch: -3 };
      expect(await client.queryTxn(url, 't', { refuse: false, asCoordinator: true }).catch((e: Error) => e)).to.be.an('error');
      answer = { repo_id: 'o/other', live: true, epoch: 1, generation: 0 };
      expect(await client.repoState(url, 'o/r', {}).catch((e: Error) => e)).to.be.an('error');
      expect(seen?.[NODE_HEADER], 'the operator tools name no node').to.equal(undefined);
    } finally {
      client.close();
    }
  });
});
