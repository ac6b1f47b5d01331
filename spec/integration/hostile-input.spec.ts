import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import nodeHttp from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import zlib from 'node:zlib';
import { expect } from 'chai';
import { LONG_2PC_ENV, Cluster, GitClient, eventually, http, type HttpResult, type TestNode, withCluster } from '../support/cluster.js';
import { startHealthProber } from '../../scripts/health-prober.js';
import { SECRET_HEADER, cloneLocal, commitFile, createRepo, diskRefs, expectFsckClean, expectPushed, repoCoordinatedBy } from '../support/push-helpers.js';

// Hostile input on git's smart HTTP (issue 8, "a node survives every request"): every request here
// is unauthenticated and malformed, abusive or cut off. Each test checks the answer, that nothing
// changed on any node, and that every node still answers /health.

interface RawAnswer {
  status: number;
  headers: nodeHttp.IncomingHttpHeaders;
  body: Buffer;
}

/** A POST sent byte for byte (headers as given, no content-type added). */
function rawPost(base: string, pathname: string, headers: Record<string, string>, body: Buffer | string, localAddress?: string): Promise<RawAnswer> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const from = localAddress ? { localAddress, agent: false } : {};
    const req = nodeHttp.request({ host: hostname, port, method: 'POST', path: pathname, headers, timeout: 30_000, ...from }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`POST ${pathname} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** An HTTP/1.1 upgrade request sent byte for byte, then `payload`; the status line and all that follows the head, until the node closes. */
function rawUpgrade(base: string, pathname: string, headers: Record<string, string>, payload: string): Promise<{ status: number; body: string }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    socket.setTimeout(30_000, () => socket.destroy(new Error(`upgrade of ${pathname} timed out`)));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), body: end < 0 ? '' : text.slice(end + 4) });
    });
    const head = [`GET ${pathname} HTTP/1.1`, `host: ${hostname}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', ''].join('\r\n');
    socket.write(head + payload);
  });
}

/** A POST that announces a huge body and sends only `first` (maybe nothing); the answer, if any, arrives later. */
function heldPost(
  base: string,
  pathname: string,
  headers: Record<string, string>,
  first: Buffer | string,
  localAddress?: string,
): { answer: Promise<RawAnswer | 'closed'>; settled: () => RawAnswer | 'closed' | undefined; abort: () => void; write: (more: string) => void; isOpen: () => boolean } {
  const { hostname, port } = new URL(base);
  // A connection of its own, as a slow client has: a kept-alive socket from an earlier request could
  // be closed under it by the node, and the request would then hold nothing.
  const req = nodeHttp.request({ host: hostname, port, method: 'POST', path: pathname, headers: { 'content-length': String(10 ** 9), ...headers }, agent: false, ...(localAddress ? { localAddress } : {}) });
  let settled: RawAnswer | 'closed' | undefined;
  const answer = new Promise<RawAnswer | 'closed'>((resolve) => {
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', () => resolve('closed'));
    });
    req.on('error', () => resolve('closed'));
  });
  void answer.then((a) => (settled = a));
  req.flushHeaders();
  if (first.length > 0) req.write(first);
  return {
    answer,
    settled: () => settled,
    abort: () => req.destroy(),
    write: (more) => void (req.destroyed || req.write(more)),
    isOpen: () => !req.destroyed && req.socket?.destroyed === false,
  };
}

/** A connection that sends half a request head and then nothing (a slowloris): the node holds it, unanswered. */
function stalledConnection(base: string, localAddress: string): { closed: Promise<'closed'>; data: () => string; socket: net.Socket } {
  const { hostname, port } = new URL(base);
  const socket = net.connect({ host: hostname, port: Number(port), localAddress });
  let data = '';
  socket.on('data', (d) => (data += d.toString('latin1')));
  socket.on('error', () => undefined);
  socket.on('connect', () => socket.write(`GET /health HTTP/1.1\r\nhost: ${hostname}\r\n`));
  return { closed: new Promise((resolve) => socket.once('close', () => resolve('closed'))), data: () => data, socket };
}

function errorCode(answer: RawAnswer): string | undefined {
  try {
    return JSON.parse(answer.body.toString('utf8')).error?.code;
  } catch {
    return undefined;
  }
}

/** The git RPC processes (not ref advertisements) a node runs for `service`. */
function rpcGits(node: TestNode, service: string): string[] {
  return node
    .processes()
    .map((p) => p.command)
    .filter((c) => c.includes(service) && c.includes('--stateless-rpc') && !c.includes('--advertise-refs'));
}

function pkt(line: string): string {
  return (4 + Buffer.byteLength(line)).toString(16).padStart(4, '0') + line;
}

describe('hostile input on git smart HTTP (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  const env = {
    MAX_GIT_PROCESSES: '4',
    MAX_GIT_PROCESSES_PER_CLIENT: '3',
    // A request beyond a cap waits this long for a slot before its 503 (default 10 s): short here,
    // where most specs hold the slots until the wait is over.
    GIT_QUEUE_WAIT_MS: '2000',
    MAX_CONNECTIONS_PER_CLIENT: '8',
    // A load balancer on loopback's 127.0.0.3 (the cluster itself uses 127.0.0.1).
    TRUSTED_PROXIES: '127.0.0.3',
    // The cap specs probe once the node counts the held requests (heldAdmitted), well within this.
    GIT_BODY_IDLE_TIMEOUT_MS: '5000',
    MAX_PACK_BYTES: String(1024 * 1024),
    ...LONG_2PC_ENV,
    // Holds every push in its hook for a moment after the decision, so a client can be killed there.
    FAILPOINTS: 'push.participant.before-apply=delay(1500)',
  };
  // /health on the coordinator every 100 ms through the whole table, from a process of its own (the
  // issue asks it to answer within 100 ms throughout), stopped before the cluster is: printed at the
  // end, not asserted (a timing goal is a benchmark's, `npm run bench:slow`).
  let prober: Awaited<ReturnType<typeof startHealthProber>> | undefined;
  after(async function () {
    if (!prober) return;
    const { latencies_ms: seen, failed } = await prober.stop();
    const sorted = [...seen].sort((a, b) => a - b);
    process.stdout.write(
      `      /health on ${coordinator.serverId} through the hostile-input table: ${sorted.length} probes, ${failed} failed, median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted[sorted.length - 1]} ms (target 100 ms)\n`,
    );
  });

  withCluster(3, { env }, (c, g) => {
    [cluster, git] = [c, g];
  });

  let repoId: string;
  let coordinator: TestNode;
  let other: TestNode;
  let head: string;
  let baseline: Record<string, string>[];

  async function expectUnchangedAndHealthy(): Promise<void> {
    for (const node of cluster.nodes) {
      expect(node.running, `${node.serverId} exited:\n${node.logTail()}`).to.equal(true);
      const health = await http(`${node.url}/health`, { timeoutMs: 5000 });
      expect(health.status, node.serverId).to.equal(200);
    }
    const now = await Promise.all(cluster.nodes.map((n) => diskRefs(git, n, repoId)));
    expect(now).to.deep.equal(baseline);
  }

  before(async function () {
    coordinator = cluster.node(1);
    other = cluster.node(2);
    repoId = repoCoordinatedBy(cluster, coordinator, 'mallory', 'hostile');
    await createRepo(cluster, coordinator, repoId);
    const work = await cloneLocal(git, coordinator, repoId, 'seed');
    head = await commitFile(git, work, 'README.md', '# hostile\n');
    expectPushed(await git.run(['push', coordinator.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await eventually(async () => {
      for (const n of cluster.nodes) expect((await diskRefs(git, n, repoId))['refs/heads/main'], n.serverId).to.equal(head);
    });
    baseline = await Promise.all(cluster.nodes.map((n) => diskRefs(git, n, repoId)));
    prober = await startHealthProber(`${coordinator.url}/health`);
    prober.go();
  });

  describe('bodies that do not decode or are not git', function () {
    it('answers 400 to a gzip body that is not gzip (upload-pack, receive-pack, and receive-pack proxied to the coordinator)', async function () {
      const junk = Buffer.from('this is not gzip at all, just text');
      for (const [node, service] of [
        [coordinator, 'upload-pack'],
        [coordinator, 'receive-pack'],
        [other, 'receive-pack'],
      ] as const) {
        const answer = await rawPost(node.url, `/${repoId}.git/git-${service}`, { 'content-type': `application/x-git-${service}-request`, 'content-encoding': 'gzip' }, junk);
        expect(answer.status, `${node.serverId} ${service}: ${answer.body}`).to.equal(400);
        expect(errorCode(answer)).to.equal('invalid_body');
        expect(answer.body.toString()).not.to.match(/\n\s+at /);
      }
      await expectUnchangedAndHealthy();
    });

    it('refuses 64 KB of junk to receive-pack with 400 before starting git', async function () {
      const answer = await rawPost(coordinator.url, `/${repoId}.git/git-receive-pack`, { 'content-type': 'application/x-git-receive-pack-request' }, 'a'.repeat(64 * 1024));
      expect(answer.status, answer.body.toString()).to.equal(400);
      expect(errorCode(answer)).to.equal('invalid_body');
      await expectUnchangedAndHealthy();
    });

    it('inflates a deflate body (it used to be deflated a second time)', async function () {
      const request = pkt(`want ${head}\n`) + '0000' + pkt('done\n');
      const answer = await rawPost(coordinator.url, `/${repoId}.git/git-upload-pack`, { 'content-type': 'application/x-git-upload-pack-request', 'content-encoding': 'deflate' }, zlib.deflateSync(request));
      expect(answer.status).to.equal(200);
      expect(answer.body.includes(Buffer.from('PACK')), answer.body.toString('latin1')).to.equal(true);
      await expectUnchangedAndHealthy();
    });

    it('answers 415 to a content-encoding it does not know', async function () {
      const answer = await rawPost(coordinator.url, `/${repoId}.git/git-upload-pack`, { 'content-type': 'application/x-git-upload-pack-request', 'content-encoding': 'br' }, 'xx');
      expect(answer.status).to.equal(415);
      expect(errorCode(answer)).to.equal('unsupported_media_type');
      await expectUnchangedAndHealthy();
    });
  });

  describe('slow and idle clients', function () {
    const uploadPath = (): string => `/${repoId}.git/git-upload-pack`;
    // Served here, not after a read check that could send them to another node (or answer 503
    // read_quorum_unreachable on a loaded machine): the caps are this node's.
    const headers = { 'content-type': 'application/x-git-upload-pack-request', [SECRET_HEADER]: '', 'x-quorum-direct': '1' };

    /**
     * Waits until the coordinator counts every held request under its caps (its metrics). Probing
     * sooner raced them: a probe that came first took a slot, one held request was refused in its
     * place, and every later probe fit under the cap (a CI run's failure).
     */
    async function heldAdmitted(held: ReturnType<typeof heldPost>[]): Promise<void> {
      await eventually(async () => {
        const early = held.map((h) => h.settled()).find((a) => a !== undefined);
        if (early !== undefined) throw new Error(`a held request ended early: ${early === 'closed' ? 'closed' : `${early.status} ${early.body.toString()}`}`);
        const metrics = await http(`${coordinator.url}/metrics`);
        const admitted = /^quorum_git_git_rpcs_admitted (\d+)$/m.exec(metrics.text);
        expect(Number(admitted?.[1]), 'git RPCs admitted on the coordinator').to.equal(held.length);
      });
    }

    it('starts no git for a request without a body, caps RPCs per client with 503 + Retry-After, and ends idle ones', async function () {
      const direct = { ...headers, [SECRET_HEADER]: cluster.secret };
      const held = [1, 2, 3].map(() => heldPost(coordinator.url, uploadPath(), direct, ''));
      // The three are in (the fourth is refused because they hold their slots) while no git runs for them.
      await heldAdmitted(held);
      const refused = await rawPost(coordinator.url, uploadPath(), direct, pkt(`want ${head}\n`) + '0000' + pkt('done\n'));
      expect(refused.status).to.equal(503);
      expect(errorCode(refused)).to.equal('git_busy');
      expect(Number(refused.headers['retry-after'])).to.be.greaterThan(0);
      expect(rpcGits(coordinator, 'upload-pack')).to.deep.equal([]);
      // No byte for GIT_BODY_IDLE_TIMEOUT_MS: each held request is answered 408 (or cut off).
      const answers = await Promise.all(held.map((h) => h.answer));
      for (const a of answers) if (a !== 'closed') expect(a.status).to.equal(408);
      // Their slots are free again.
      const dir = path.join(await git.tempDir('after-idle'), 'clone');
      expect((await git.run(['clone', coordinator.gitUrl(repoId), dir])).code).to.equal(0);
      await expectUnchangedAndHealthy();
    });

    it('lets a request beyond the per-client cap wait for a slot, and serves it when one frees within GIT_QUEUE_WAIT_MS', async function () {
      const direct = { ...headers, [SECRET_HEADER]: cluster.secret };
      const held = [1, 2, 3].map(() => heldPost(coordinator.url, uploadPath(), direct, ''));
      await heldAdmitted(held);
      let answered = false;
      const waiting = rawPost(coordinator.url, uploadPath(), direct, pkt(`want ${head}\n`) + '0000' + pkt('done\n'));
      void waiting.then(() => (answered = true));
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Not refused at once: it waits in the queue (its whole request is sent; only a slot is missing).
      expect(answered, 'answered while every slot was held').to.equal(false);
      held[0]!.abort();
      const served = await waiting;
      expect(served.status, `the waiting request, once a slot freed: ${served.body.toString().slice(0, 300)}`).to.equal(200);
      expect(served.body.includes('PACK'), 'it got the pack').to.equal(true);
      for (const h of held) h.abort();
      await Promise.all(held.map((h) => h.answer));
      await expectUnchangedAndHealthy();
    });

    it('caps RPCs per node across clients (as told by a peer proxying them)', async function () {
      const asPeerFrom = (address: string): Record<string, string> => ({ ...headers, [SECRET_HEADER]: cluster.secret, 'x-forwarded-for': address });
      const held = [
        ...[1, 2, 3].map(() => heldPost(coordinator.url, uploadPath(), asPeerFrom('10.0.0.1'), '')),
        heldPost(coordinator.url, uploadPath(), asPeerFrom('10.0.0.2'), ''),
      ];
      await heldAdmitted(held);
      const refused = await rawPost(coordinator.url, uploadPath(), asPeerFrom('10.0.0.3'), pkt(`want ${head}\n`) + '0000' + pkt('done\n'));
      expect(refused.status).to.equal(503);
      expect(errorCode(refused)).to.equal('git_busy');
      for (const h of held) h.abort();
      await Promise.all(held.map((h) => h.answer));
      await expectUnchangedAndHealthy();
    });

    // Behind a load balancer every client arrives from the balancer's address: the per-client caps
    // charged them all to one client, and the connection cap closed the balancer's connections.
    it('behind a load balancer of TRUSTED_PROXIES, charges each client the address the balancer names, and never caps its connections', async function () {
      const lb = env.TRUSTED_PROXIES;
      const request = pkt(`want ${head}\n`) + '0000' + pkt('done\n');
      const from = (client: string): Record<string, string> => ({ 'content-type': 'application/x-git-upload-pack-request', 'x-forwarded-for': client });
      const held = [1, 2, 3].map(() => heldPost(coordinator.url, uploadPath(), from('203.0.113.1'), '', lb));
      try {
        await heldAdmitted(held);
        const same = await rawPost(coordinator.url, uploadPath(), from('203.0.113.1'), request, lb);
        expect([same.status, errorCode(same)], 'the same client again').to.deep.equal([503, 'git_busy']);
        const other = await rawPost(coordinator.url, uploadPath(), from('203.0.113.2'), request, lb);
        expect(other.status, `another client through the balancer: ${other.body.toString().slice(0, 200)}`).to.equal(200);
      } finally {
        for (const h of held) h.abort();
        await Promise.all(held.map((h) => h.answer));
      }
      // From an address not in the list, x-forwarded-for is the client's own writing: not believed.
      const spoofing = [1, 2, 3].map((i) => heldPost(coordinator.url, uploadPath(), from(`203.0.113.${10 + i}`), '', '127.0.0.2'));
      try {
        await heldAdmitted(spoofing);
        const refused = await rawPost(coordinator.url, uploadPath(), from('203.0.113.20'), request, '127.0.0.2');
        expect([refused.status, errorCode(refused)], 'a fourth request naming yet another client').to.deep.equal([503, 'git_busy']);
      } finally {
        for (const h of spoofing) h.abort();
        await Promise.all(spoofing.map((h) => h.answer));
      }
      // More connections from the balancer than MAX_CONNECTIONS_PER_CLIENT stay open (each a request half sent).
      const sockets = Array.from({ length: Number(env.MAX_CONNECTIONS_PER_CLIENT) + 4 }, () => stalledConnection(coordinator.url, lb).socket);
      try {
        await eventually(() => expect(sockets.filter((s) => s.readyState === 'open').length).to.equal(sockets.length));
        await new Promise((resolve) => setTimeout(resolve, 300));
        expect(sockets.filter((s) => s.destroyed || s.readyState !== 'open').length, 'balancer connections closed').to.equal(0);
      } finally {
        for (const socket of sockets) socket.destroy();
      }
      await expectUnchangedAndHealthy();
    });

    // Found by `npm run bench:slow`: a burst of slow clients all passed the per-client check (no git
    // ran for any of them yet), each spent a read check with both peers and a look at the disk, and
    // only then was refused; /health waited 130-210 ms behind the burst.
    it('turns away a burst beyond the per-client cap before any read check, spending nothing on the peers', async function () {
      const cap = Number(env.MAX_GIT_PROCESSES_PER_CLIENT);
      const request = pkt(`want ${head}\n`) + '0000' + pkt('done\n');
      const plain = { 'content-type': 'application/x-git-upload-pack-request' };
      const burst = Array.from({ length: cap + 20 }, () => heldPost(coordinator.url, uploadPath(), plain, request[0]!));
      try {
        const refused = await eventually(async () => {
          const answers = (await Promise.all(burst.map((b) => Promise.race([b.answer, Promise.resolve(undefined)])))).filter((a): a is RawAnswer => a !== undefined && a !== 'closed');
          expect(answers.length).to.be.at.least(20);
          return answers;
        }, 30_000);
        const ids = refused.map((a) => {
          expect(a.status).to.equal(503);
          expect(errorCode(a)).to.equal('git_busy');
          return String(a.headers['x-request-id']);
        });
        // A read check carries the request's id to the peers, whose request log names it.
        const peers = cluster.nodes.filter((n) => n !== coordinator);
        const peerLogs = (await Promise.all(peers.map((n) => fs.readFile(n.logFile, 'utf8')))).join('\n');
        expect(ids.filter((id) => peerLogs.includes(id)), 'refused requests that reached a peer').to.deep.equal([]);
      } finally {
        for (const b of burst) b.abort();
        await Promise.all(burst.map((b) => b.answer));
      }
      await expectUnchangedAndHealthy();
    });

    // The per-client git cap answers every request beyond it, at about 1 ms of the node's time each:
    // 300 arriving at once kept /health waiting 130-210 ms (npm run bench:slow). Connections beyond
    // MAX_CONNECTIONS_PER_CLIENT are closed as they are accepted instead. 127.0.0.2 is loopback too,
    // but not this cluster's address (its peers and tools use 127.0.0.1, never capped).
    it('closes connections beyond the per-address cap as they are accepted, and takes that address again once it closes them', async function () {
      const maxConnections = Number(env.MAX_CONNECTIONS_PER_CLIENT);
      const stalled = (): ReturnType<typeof stalledConnection> => stalledConnection(coordinator.url, '127.0.0.2');
      const held = Array.from({ length: maxConnections }, stalled);
      const extra: ReturnType<typeof stalled>[] = [];
      try {
        // The cap's worth of connections is held open by the node...
        await eventually(() => expect(held.every((h) => h.socket.readyState === 'open')).to.equal(true));
        await new Promise((resolve) => setTimeout(resolve, 300));
        // ...so every further one from that address is closed as it is accepted, with no HTTP answer.
        extra.push(...Array.from({ length: 20 }, stalled));
        const timedOut = new Promise<never>((_resolve, reject) => setTimeout(() => reject(new Error('connections beyond the cap still open after 10 s')), 10_000).unref());
        await Promise.race([Promise.all(extra.map((e) => e.closed)), timedOut]);
        expect(extra.map((e) => e.data()).filter((d) => d !== ''), 'answers to the connections beyond the cap').to.deep.equal([]);
        expect(held.filter((h) => h.socket.destroyed), 'held connections closed').to.deep.equal([]);
        expect((await http(`${coordinator.url}/health`)).status).to.equal(200);
      } finally {
        for (const h of [...held, ...extra]) h.socket.destroy();
        await Promise.all(held.map((h) => h.closed));
      }
      // Closed by the client, its connections no longer count.
      const status = await eventually(
        () =>
          new Promise<number>((resolve, reject) => {
            const { hostname, port } = new URL(coordinator.url);
            nodeHttp
              .get({ host: hostname, port, path: '/health', localAddress: '127.0.0.2', agent: false }, (res) => {
                res.resume();
                resolve(res.statusCode ?? 0);
              })
              .on('error', reject);
          }),
      );
      expect(status).to.equal(200);
      await expectUnchangedAndHealthy();
    });

    it('answers /health while 300 slow clients come at upload-pack, and holds no more of them than the cap (latency printed, not asserted)', async function () {
      // Unauthenticated, from one address (not the cluster's), each announcing a huge body and sending
      // one byte every 2 s: the connection cap closes all but a few as they come, the git cap answers
      // most of those (503, and the connection is closed), the rest are held.
      const request = pkt(`want ${head}\n`) + '0000' + pkt('done\n');
      const slow = Array.from({ length: 300 }, () => {
        const held = heldPost(coordinator.url, uploadPath(), { 'content-type': 'application/x-git-upload-pack-request' }, request[0]!, '127.0.0.2');
        let sent = 1;
        const drip = setInterval(() => held.write(request[sent++ % request.length]!), 2000);
        const client = { ...held, done: held.answer, answer: undefined as RawAnswer | 'closed' | undefined, stop: () => (clearInterval(drip), held.abort()) };
        void held.answer.then((a) => (client.answer = a));
        return client;
      });
      try {
        const cap = Number(env.MAX_GIT_PROCESSES_PER_CLIENT);
        // Probed from the moment the 300 arrive until
        // all but the capped few have been answered, and at least 10 times.
        const latenciesMs: number[] = [];
        const deadline = Date.now() + 40_000;
        while (latenciesMs.length < 10 || slow.filter((c) => c.answer !== undefined).length < 300 - cap) {
          expect(Date.now(), 'the 300 were answered within 40 s').to.be.below(deadline);
          const started = performance.now();
          // A probe queued behind the whole flood (every refused RPC runs its read check first) takes
          // seconds on a loaded machine: the timeout is only a bound, the latency is what is printed.
          const health = await http(`${coordinator.url}/health`, { timeoutMs: 30_000 });
          latenciesMs.push(Math.round(performance.now() - started));
          expect(health.status).to.equal(200);
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        const tally: Record<string, number> = {};
        for (const c of slow) {
          const key = c.answer === undefined ? 'held' : c.answer === 'closed' ? 'closed' : String(c.answer.status);
          tally[key] = (tally[key] ?? 0) + 1;
        }
        const open = slow.filter((c) => c.isOpen()).length;
        expect(tally.held ?? 0, 'held beyond the per-client cap').to.be.at.most(cap);
        const sorted = [...latenciesMs].sort((a, b) => a - b);
        const median = sorted[Math.floor(sorted.length / 2)];
        process.stdout.write(
          `      /health while 300 slow clients came in: ${sorted.length} probes, median ${median} ms, max ${sorted[sorted.length - 1]} ms (target 100 ms); answers ${JSON.stringify(tally)}, ${open} connections still open\n`,
        );
      } finally {
        for (const c of slow) c.stop();
        await Promise.all(slow.map((c) => c.done));
      }
      await expectUnchangedAndHealthy();
    });

    it('does not cut off a slow but live push', async function () {
      // A proxy that passes the push's body on 64 bytes at a time, 100 ms apart: longer than the
      // idle timeout in all, but never idle that long.
      const upstream = new URL(coordinator.url);
      const server = nodeHttp.createServer((req, res) => {
        const out = nodeHttp.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: { ...req.headers, host: upstream.host } }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        });
        out.on('error', () => res.destroy());
        if (req.method !== 'POST') return void req.pipe(out);
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', async () => {
          const body = Buffer.concat(chunks);
          for (let at = 0; at < body.length; at += 64) {
            out.write(body.subarray(at, at + 64));
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          out.end();
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
      try {
        const work = await cloneLocal(git, coordinator, repoId, 'slow');
        // A small pack: writes 100 ms apart, several seconds in all (the idle timeout is 5 s), never idle.
        await fs.writeFile(path.join(work, 'noise.bin'), randomBytes(1200));
        await git.ok(['add', 'noise.bin'], { cwd: work });
        await git.ok(['commit', '-q', '-m', 'noise'], { cwd: work });
        const oid = (await git.ok(['rev-parse', 'HEAD'], { cwd: work })).trim();
        const port = (server.address() as AddressInfo).port;
        expectPushed(await git.run(['-c', 'http.postBuffer=1048576', 'push', `http://127.0.0.1:${port}/${repoId}.git`, 'HEAD:refs/heads/slow'], { cwd: work }));
        await eventually(async () => {
          for (const n of cluster.nodes) expect((await diskRefs(git, n, repoId))['refs/heads/slow'], n.serverId).to.equal(oid);
        });
        // Put back what the other tests compare with.
        expectPushed(await git.run(['push', coordinator.gitUrl(repoId), ':refs/heads/slow'], { cwd: work }));
        await eventually(async () => expect(await Promise.all(cluster.nodes.map((n) => diskRefs(git, n, repoId)))).to.deep.equal(baseline));
      } finally {
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
      await expectUnchangedAndHealthy();
    });
  });

  describe('pushes', function () {
    it('refuses a pack over MAX_PACK_BYTES at the coordinator, naming the limit', async function () {
      const work = await cloneLocal(git, coordinator, repoId, 'big');
      await fs.writeFile(path.join(work, 'big.bin'), randomBytes(3 * 1024 * 1024));
      await git.ok(['add', 'big.bin'], { cwd: work });
      await git.ok(['commit', '-q', '-m', 'big'], { cwd: work });
      const push = await git.run(['push', other.gitUrl(repoId), 'HEAD:refs/heads/big'], { cwd: work });
      expect(push.code).not.to.equal(0);
      expect(push.stderr).to.match(/pack exceeds maximum allowed size/);
      expect(push.stderr, push.stderr).not.to.match(/unreachable/);
      await expectUnchangedAndHealthy();
    });

    it('lets receive-pack finish when the client goes away after the hook started', async function () {
      const work = await cloneLocal(git, coordinator, repoId, 'killed');
      const oid = await commitFile(git, work, 'killed.txt', 'the client dies mid-push\n');
      // The peers hold the push's lock from their prepare until the commit: the hook has started then.
      const client = spawn('git', ['push', coordinator.gitUrl(repoId), 'HEAD:refs/heads/killed'], { cwd: work, env: git.env, stdio: 'ignore' });
      const exited = new Promise((resolve) => client.once('exit', resolve));
      await eventually(async () => {
        const state: HttpResult = await http(`${other.url}/internal/repo-state/${repoId}`, { headers: { [SECRET_HEADER]: cluster.secret } });
        expect(state.body.locked).to.equal(true);
      }, 20_000, 5);
      client.kill('SIGKILL');
      await exited;
      await eventually(async () => {
        for (const n of cluster.nodes) expect((await diskRefs(git, n, repoId))['refs/heads/killed'], n.serverId).to.equal(oid);
      });
      await eventually(async () => {
        const objects = await fs.readdir(path.join(coordinator.repoDir(repoId), 'objects'));
        expect(objects.filter((e) => e.startsWith('tmp_objdir-incoming-'))).to.deep.equal([]);
      });
      await expectFsckClean(git, coordinator, repoId);
      baseline = await Promise.all(cluster.nodes.map((n) => diskRefs(git, n, repoId)));
      await expectUnchangedAndHealthy();
    });
  });

  describe("the proc-receive hook's upgrade", function () {
    const pkt = (text: string): string => `${(Buffer.byteLength(text) + 4).toString(16).padStart(4, '0')}${text}`;
    const version = `${pkt('version=1\0atomic\n')}0000`;

    it('is served only on its route, with the cluster secret; any other upgrade is a 4xx and changes nothing', async function () {
      const upgrade = { connection: 'Upgrade', upgrade: 'quorum-git-proc-receive' };
      const cases: { path: string; headers: Record<string, string>; status: number }[] = [
        { path: '/internal/hooks/proc-receive', headers: upgrade, status: 401 },
        { path: '/internal/hooks/proc-receive', headers: { ...upgrade, [SECRET_HEADER]: 'wrong' }, status: 401 },
        { path: '/internal/hooks/pre-receive', headers: { ...upgrade, [SECRET_HEADER]: cluster.secret }, status: 404 },
        { path: `/${repoId}.git/info/refs?service=git-receive-pack`, headers: { ...upgrade, [SECRET_HEADER]: cluster.secret }, status: 404 },
        { path: '/internal/hooks/proc-receive', headers: { connection: 'Upgrade', upgrade: 'websocket', [SECRET_HEADER]: cluster.secret }, status: 404 },
        { path: '/internal/hooks/../hooks/proc-receive', headers: { ...upgrade, [SECRET_HEADER]: cluster.secret }, status: 400 },
      ];
      const errorCounts = async (): Promise<Map<string, number>> => {
        const text = (await http(`${coordinator.url}/metrics`)).text;
        return new Map([...text.matchAll(/^quorum_git_http_errors_total\{code="([a-z_]+)"\} (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
      };
      const countsBefore = await errorCounts();
      const refusedCodes = new Map<string, number>();
      for (const c of cases) {
        const answer = await rawUpgrade(coordinator.url, c.path, c.headers, version);
        expect(answer.status, `${c.path} ${JSON.stringify(c.headers)}`).to.equal(c.status);
        const code = JSON.parse(answer.body).error.code as string;
        expect(code, c.path).to.be.a('string');
        refusedCodes.set(code, (refusedCodes.get(code) ?? 0) + 1);
      }
      // Each refusal is counted, as any other error answer is (background requests may add to a code, never take away).
      const countsAfter = await errorCounts();
      for (const [code, n] of refusedCodes) expect((countsAfter.get(code) ?? 0) - (countsBefore.get(code) ?? 0), `errors counted as ${code}`).to.be.at.least(n);
      // Without an upgrade the route is a 400, not a hang.
      const plain = await http(`${coordinator.url}/internal/hooks/proc-receive`, { headers: { [SECRET_HEADER]: cluster.secret } });
      expect(plain.status).to.equal(400);
      await expectUnchangedAndHealthy();
    });

    it('moves nothing for a receive-pack the node holds no push for, answering ng for each ref', async function () {
      const command = `${pkt(`${head} ${'f'.repeat(40)} refs/heads/main`)}0000`;
      const answer = await rawUpgrade(coordinator.url, '/internal/hooks/proc-receive', { connection: 'Upgrade', upgrade: 'quorum-git-proc-receive', [SECRET_HEADER]: cluster.secret, 'x-receive-pack-pid': '1' }, version + command);
      expect(answer.status).to.equal(101);
      expect(answer.body).to.match(/^000eversion=1\n0000[0-9a-f]{4}ng refs\/heads\/main quorum-git: this push has no transaction committed on this node; nothing was changed here\n0000$/);
      await expectUnchangedAndHealthy();
    });
  });

  describe('the management API', function () {
    it('answers 415 to a create whose content-type is not application/json, and creates nothing', async function () {
      const answer = await http(`${coordinator.url}/repos`, { method: 'POST', body: JSON.stringify({ repo_id: 'mallory/form-post' }), headers: { 'content-type': 'text/plain' } });
      expect(answer.status).to.equal(415);
      expect(answer.body.error.code).to.equal('unsupported_media_type');
      expect((await coordinator.getRepo('mallory/form-post')).status).to.equal(404);
      await expectUnchangedAndHealthy();
    });
  });
});
