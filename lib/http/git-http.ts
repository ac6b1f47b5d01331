import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import type http from 'node:http';
import { PassThrough, Transform, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import { systemClock, type Clock } from '../base/clock.js';
import { QuorumGitError } from '../core/errors.js';
import { advertisementHasServiceLine, gitProtocolEnv } from './git-protocol.js';
import { GitSlots, RequestHeadScanner, bodyDecoding, type GitSlot } from './git-rpc.js';
import { REQUEST_ID_ENV, handRefsToNode } from '../git/hooks.js';
import { BULK_REF_UPDATES } from '../git/ref-txn.js';
import { FLUSH_PKT, pktLine } from '../git/pkt-line.js';
import type { Logger } from '../base/logger.js';
import { REQUEST_ID_HEADER } from '../base/headers.js';
import type { GitService } from './router.js';
import type { PackTee } from '../cluster/pack-tee.js';

// Git's smart HTTP. The router has already validated the name and checked that the repo exists.
//
// Both halves are our own spawns of git, as git http-backend runs them: the ref advertisement
// (GET info/refs) is `git <service> --stateless-rpc --advertise-refs <dir>`, the RPC POSTs
// (upload-pack, receive-pack) `git <service> --stateless-rpc <dir>`. Each gets the client's
// `Git-Protocol` header as GIT_PROTOCOL when it is plausible (lib/http/git-protocol.ts), which is what
// lets clients speak protocol v2 (ls-refs with ref prefixes instead of every ref on every fetch).
//
// node-git-server served info/refs until it had to pass that header on: its infoResponse spawns
// git with the node's own environment and no way to add to it, and always writes the
// `# service=...` line, which a v2 answer must not have (http-backend.c get_info_refs). A subclass
// cannot reach either (infoResponse is a free function of its util module), so that one route is
// ours too, rather than a patch-package patch of the dependency.
//
// The RPC POSTs replaced node-git-server's Service, which cannot be fixed by wrapping: it pipes the
// request into zlib before we get a say (a gzip body that is not gzip threw an unhandled error and
// ended the process; `deflate` was compressed instead of inflated), runs a quadratic regular
// expression over the first chunk (64 KB of junk held the event loop ~5 s), starts git before any
// byte arrives, and waits for push/fetch events that never fire for refs outside heads/tags. Here
// instead:
// - the body is decoded by us (gzip, deflate = zlib inflate) with an error handler on every stream;
//   a body that fails to decode is a 400, an unknown content-encoding a 415;
// - the request head (pkt-lines up to the first flush) is checked by a linear, capped scanner
//   (lib/http/git-rpc.ts); junk is a 400 and git is never started for it;
// - git starts only once the first command has arrived, and inherits process.env (our hooks and
//   config, lib/git/hooks.ts applyGitEnvironment);
// - RPCs are capped per node and per client address (503 + Retry-After), and one whose client sends
//   no body byte (or reads no response byte) for bodyIdleTimeoutMs is ended (408 when possible);
// - git is killed when the client goes away, except a receive-pack whose pre-receive hook has
//   started (markHookStarted): the push may be committed on the peers already, and killing
//   receive-pack then failed our own apply and left its quarantine behind.

/** Seconds a client refused for lack of a git slot is told to wait. */
export const GIT_BUSY_RETRY_AFTER_S = 5;

export interface GitHttpLimits {
  /** Bytes of pkt-lines before the first flush of an RPC request (the commands of a push). */
  maxHeadBytes: number;
  bodyIdleTimeoutMs: number;
  maxProcesses: number;
  maxProcessesPerClient: number;
  /** How long an RPC beyond a cap waits for a slot before its 503 (GitSlots.acquire); 0: refused at once. */
  queueWaitMs: number;
}

interface ReceivePack {
  exit: Promise<void>;
  hookStarted: boolean;
  /** Who sent the push, as the caller of rpc() described it (for the audit line its hook writes). */
  origin: unknown;
  /** Its pack, streamed to the peers as it came (lib/cluster/pack-tee.ts). */
  tee: PackTee | undefined;
  /** It hands its refs to the node through the proc-receive hook instead of moving them (a push of BULK_REF_UPDATES refs or more). */
  procReceive: boolean;
}

/** A new push's streams of its pack to the peers (`requestId`: the push's, for the peers' logs). */
export type PackTeeFactory = (requestId: string | undefined) => PackTee;

export class GitHttp {
  private readonly repoPath: (repoId: string) => string;
  private readonly logger: Logger;
  private readonly limits: GitHttpLimits;
  private readonly slots: GitSlots;
  private readonly running = new Set<ChildProcess>();
  /** Gits writing a ref advertisement: not capped (they read no body and end by themselves), stopped at shutdown. */
  private readonly advertising = new Set<ChildProcess>();
  /** receive-pack processes by pid: the pre-receive hook names its parent, and a push's own commit waits for its exit. */
  private readonly receivePacks = new Map<number, ReceivePack>();

  private readonly clock: Clock;

  private readonly packTee: PackTeeFactory | undefined;

  constructor(repoPath: (repoId: string) => string, logger: Logger, limits: GitHttpLimits, clock: Clock = systemClock, packTee?: PackTeeFactory) {
    this.packTee = packTee;
    this.clock = clock;
    this.logger = logger;
    this.limits = limits;
    this.slots = new GitSlots(limits.maxProcesses, limits.maxProcessesPerClient, { waitMs: limits.queueWaitMs, clock });
    this.repoPath = repoPath;
  }

  /** Number of git RPC processes serving requests right now. */
  get activeProcesses(): number {
    return this.running.size;
  }

  /** Git RPC requests admitted under the caps now: running git, or waiting for their body to start. */
  get slotsInUse(): number {
    return this.slots.inUse;
  }

  infoRefs(req: http.IncomingMessage, res: http.ServerResponse, repoId: string, service: GitService): void {
    this.prepareInfoRefs(req, repoId, service).send(res);
  }

  /**
   * Starts the ref advertisement before we know whether to serve it (the read's freshness check runs
   * meanwhile): git's start-up and the peers' round trip overlap instead of adding up. Its output is
   * held until `send`; `discard` ends git unread.
   *
   * What git http-backend answers (http-backend.c get_info_refs): no-cache headers, the
   * `# service=git-<service>` pkt-line and a flush unless the client asked for protocol v2, then
   * `git <service> --advertise-refs` run with the client's GIT_PROTOCOL, which for v2 is
   * upload-pack's capability advertisement instead of the refs.
   */
  prepareInfoRefs(req: http.IncomingMessage, repoId: string, service: GitService): PendingAdvertisement {
    const pending = new PendingAdvertisement();
    const dir = this.repoPath(repoId);
    // The router checked the repo; a delete committed since then leaves nothing for git to read.
    if (!existsSync(dir)) {
      pending.statusCode = 404;
      pending.setHeader('content-type', 'text/plain');
      pending.end('repository not found');
      return pending;
    }
    const gitProtocol = gitProtocolEnv(req.headers['git-protocol']);
    if (gitProtocol === undefined && req.headers['git-protocol'] !== undefined) {
      this.logger.debug('ignoring an implausible Git-Protocol header; serving protocol v0', { service });
    }
    pending.setHeader('content-type', `application/x-git-${service}-advertisement`);
    pending.setHeader('expires', 'Fri, 01 Jan 1980 00:00:00 GMT');
    pending.setHeader('pragma', 'no-cache');
    pending.setHeader('cache-control', 'no-cache, max-age=0, must-revalidate');
    if (advertisementHasServiceLine(gitProtocol)) pending.write(Buffer.concat([pktLine(`# service=git-${service}\n`), FLUSH_PKT]));
    const child = spawn('git', [service, '--stateless-rpc', '--advertise-refs', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(gitProtocol === undefined ? {} : { env: { ...process.env, GIT_PROTOCOL: gitProtocol } }),
    });
    this.advertising.add(child);
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => {
      if (stderr.length < 2048) stderr += c.toString('utf8');
    });
    child.on('error', (err) => {
      this.advertising.delete(child);
      this.logger.warn('git could not be started', { service, err: err.message });
      pending.destroy();
    });
    child.stdout!.on('error', (err) => this.logger.debug('git stdout closed', { err: err.message }));
    child.once('exit', (code, signal) => {
      this.advertising.delete(child);
      // SIGTERM is ours: the advertisement was not wanted, or its client went away.
      if (code !== 0 && signal !== 'SIGTERM') this.logger.warn('git exited with an error', { service, code, signal, stderr: stderr.trim().slice(0, 500) });
    });
    pending.attach(child);
    return pending;
  }

  /**
   * Takes `client`'s git slot for an RPC before anything slower (a read check with the peers, a look
   * at the disk) is spent on it: at once, or after waiting in the bounded queue for up to
   * GIT_QUEUE_WAIT_MS (GitSlots.acquire), or it refuses the request (503 git_busy). Only checking
   * here and taking the slot in rpc() let a burst of 300 slow clients all pass (no git ran for any of
   * them yet) and each pay its read check before being refused. The slot goes to rpc(); a request
   * served otherwise (proxied, refused) releases it. Nothing reads the body while it waits.
   */
  async admit(req: http.IncomingMessage, res: http.ServerResponse, service: GitService, client: string, log: Logger): Promise<{ slot: GitSlot } | { refused: Promise<void> }> {
    const { slot: waited, cancel } = this.slots.acquire(client);
    // A client that goes away while it waits leaves the queue; nothing is answered to it.
    res.once('close', cancel);
    const slot = await waited;
    res.off('close', cancel);
    if (res.destroyed || res.writableEnded) {
      if (!('refused' in slot)) slot.release();
      return { refused: Promise.resolve() };
    }
    if ('refused' in slot) return { refused: this.refuseBusy(req, res, service, client, log, slot.refused) };
    return { slot };
  }

  private refuseBusy(req: http.IncomingMessage, res: http.ServerResponse, service: GitService, client: string, log: Logger, per: 'node' | 'client'): Promise<void> {
    log.warn('git request refused: too many at once', { service, client, per });
    res.setHeader('retry-after', String(GIT_BUSY_RETRY_AFTER_S));
    const what = per === 'node' ? 'this node serves' : 'this node serves one client';
    return this.refuse(req, res, new QuorumGitError('git_busy', `${what} at most ${per === 'node' ? this.limits.maxProcesses : this.limits.maxProcessesPerClient} git requests at once; retry in ${GIT_BUSY_RETRY_AFTER_S} s`));
  }

  /**
   * Serves one RPC POST with the slot admit() gave it. Resolves when the response is over; rejects
   * with a QuorumGitError the caller turns into the answer while nothing was sent yet (after that the
   * response is cut off). `client` is the address the per-client limit charges; `origin` is kept with
   * a receive-pack for its hook (receivePackOrigin).
   */
  rpc(req: http.IncomingMessage, res: http.ServerResponse, repoId: string, service: GitService, log: Logger, client: string, slot: GitSlot, origin?: unknown): Promise<void> {
    const decoding = bodyDecoding(req.headers['content-encoding']);
    if (decoding === undefined) {
      slot.release();
      return this.refuse(req, res, new QuorumGitError('unsupported_media_type', `content-encoding ${String(req.headers['content-encoding'])} is not supported; use gzip or none`));
    }
    const dir = this.repoPath(repoId);
    const gitProtocol = gitProtocolEnv(req.headers['git-protocol']);
    const requestId = res.getHeader(REQUEST_ID_HEADER);
    const tee = service === 'receive-pack' ? this.packTee?.(typeof requestId === 'string' ? requestId : undefined) : undefined;
    return new Promise<void>((resolve, reject) => {
      let child: ChildProcess | undefined;
      let settled = false;
      const settle = (err?: QuorumGitError): void => {
        if (settled) return;
        settled = true;
        if (err === undefined) resolve();
        else reject(err);
      };
      const hookStarted = (): boolean => child?.pid !== undefined && this.receivePacks.get(child.pid)?.hookStarted === true;
      let timer: unknown;

      // Ends the request with `err`: answered when nothing was sent yet, else cut off. git is
      // stopped unless the push is already in its hook (then it runs to its end on its own).
      const abort = (err: QuorumGitError): void => {
        if (timer) this.clock.clearTimeout(timer);
        timer = undefined;
        tee?.abandon();
        if (child && child.exitCode === null && child.signalCode === null && !hookStarted()) child.kill('SIGTERM');
        if (!res.headersSent && !settled) {
          // The rest of the body is not read: the connection closes after the answer.
          res.setHeader('connection', 'close');
          res.once('finish', () => req.destroy());
          settle(err);
        } else {
          res.destroy();
        }
      };

      // One timer for "no progress": no body byte while the body is still coming, or no byte taken
      // by a client that has stopped reading. git thinking quietly (a large pack, the hook) is not idle.
      const arm = (): void => {
        if (timer) this.clock.clearTimeout(timer);
        timer = this.clock.setTimeout(() => {
          timer = undefined;
          if (!req.complete) {
            log.warn('git request body stalled; ending it', { service, client, idle_ms: this.limits.bodyIdleTimeoutMs });
            abort(new QuorumGitError('request_timeout', `no request body byte for ${this.limits.bodyIdleTimeoutMs} ms`));
          } else if (res.writableNeedDrain && !hookStarted()) {
            log.warn('git client stopped reading; ending it', { service, client, idle_ms: this.limits.bodyIdleTimeoutMs });
            abort(new QuorumGitError('request_timeout', `the client read nothing for ${this.limits.bodyIdleTimeoutMs} ms`));
          } else {
            arm();
          }
        }, this.limits.bodyIdleTimeoutMs);
      };
      arm();

      const scanner = new RequestHeadScanner(service, this.limits.maxHeadBytes);
      let held: Buffer[] = [];
      // A push's receive-pack starts once its whole head (the ref updates) is in: how many refs it
      // moves decides how it moves them (handRefsToNode). Other services start at their first line.
      const headIn = (): boolean => (service === 'receive-pack' ? scanner.state.state === 'done' : scanner.firstLineChecked);
      const start = (): void => {
        const procReceive = service === 'receive-pack' && scanner.commands >= BULK_REF_UPDATES;
        this.startRpc(service, dir, gitProtocol, log, gate, res, (c) => (child = c), slot.release, arm, origin, tee, procReceive);
      };
      const gate = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          tee?.feed(chunk);
          if (scanner.state.state === 'more') {
            const verdict = scanner.feed(chunk);
            if (verdict.state === 'invalid') return done(new QuorumGitError('invalid_body', verdict.message));
            if (!headIn()) {
              held.push(chunk);
              return done();
            }
            if (child === undefined) start();
            for (const h of held) this.push(h);
            held = [];
          }
          done(null, chunk);
        },
        flush(done) {
          if (scanner.state.state !== 'done') return done(new QuorumGitError('invalid_body', 'the request body ended inside its pkt-line head'));
          tee?.end();
          done();
        },
      });
      gate.on('error', (err) => {
        log.warn('git request refused', { service, err: err.message });
        abort(err instanceof QuorumGitError ? err : new QuorumGitError('invalid_body', 'the request body could not be read'));
      });

      req.on('data', arm);
      if (decoding === 'identity') {
        req.pipe(gate);
      } else {
        const decoder = decoding === 'gzip' ? zlib.createGunzip() : zlib.createInflate();
        decoder.on('error', (err) => {
          log.warn('git request body does not decode', { service, encoding: decoding, err: err.message });
          abort(new QuorumGitError('invalid_body', `the request body is not valid ${decoding} (content-encoding ${decoding})`));
        });
        req.pipe(decoder).pipe(gate);
      }

      res.once('close', () => {
        if (timer) this.clock.clearTimeout(timer);
        timer = undefined;
        tee?.abandon();
        if (child === undefined) slot.release();
        if (!res.writableFinished && child && child.exitCode === null && child.signalCode === null) {
          if (hookStarted()) {
            // Its push may be committed on the peers: receive-pack must finish and our own apply with
            // it. Its output goes nowhere; the quarantine is removed by git as usual.
            log.warn('client went away after the pre-receive hook started; letting receive-pack finish', { service });
            child.stdout?.unpipe(res);
            child.stdout?.resume();
          } else {
            log.warn('client went away; stopping git', { service });
            child.kill('SIGTERM');
          }
        }
        settle();
      });
    });
  }

  /** Spawns git for an RPC whose first command has arrived; its stdin is what `body` passes on. */
  private startRpc(
    service: GitService,
    dir: string,
    gitProtocol: string | undefined,
    log: Logger,
    body: Readable,
    res: http.ServerResponse,
    started: (child: ChildProcess) => void,
    release: () => void,
    progress: () => void,
    origin: unknown,
    tee: PackTee | undefined,
    procReceive: boolean,
  ): void {
    res.setHeader('content-type', `application/x-git-${service}-result`);
    res.setHeader('cache-control', 'no-cache, max-age=0, must-revalidate');
    // `git <service>` runs the builtin in this very process, so child.pid is the pid the pre-receive
    // hook reports as its parent. The environment is process.env (hooks path, config), the client's
    // protocol version (a v2 request is answered by v2's serve loop, not v0's negotiation), and for a
    // push its request id, which the pre-receive hook sends back with the push (lib/git/hooks.ts).
    const requestId = res.getHeader(REQUEST_ID_HEADER);
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...(gitProtocol === undefined ? {} : { GIT_PROTOCOL: gitProtocol }),
      ...(service === 'receive-pack' && typeof requestId === 'string' ? { [REQUEST_ID_ENV]: requestId } : {}),
    };
    if (procReceive) handRefsToNode(env);
    const child = spawn('git', [service, '--stateless-rpc', dir], { stdio: ['pipe', 'pipe', 'pipe'], env });
    started(child);
    this.running.add(child);
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => {
      if (stderr.length < 2048) stderr += c.toString('utf8');
    });
    child.on('error', (err) => log.warn('git could not be started', { service, err: err.message }));
    child.stdin!.on('error', (err) => log.debug('git stdin closed', { err: err.message }));
    child.stdout!.on('error', (err) => log.debug('git stdout closed', { err: err.message }));
    child.stdout!.on('data', progress);
    res.on('drain', progress);
    if (service === 'receive-pack' && child.pid !== undefined) {
      const pid = child.pid;
      this.receivePacks.set(pid, {
        hookStarted: false,
        origin,
        tee,
        procReceive,
        exit: new Promise<void>((resolve) =>
          child.once('exit', () => {
            this.receivePacks.delete(pid);
            resolve();
          }),
        ),
      });
    }
    child.once('exit', (code, signal) => {
      this.running.delete(child);
      release();
      // The push is over: stages of its pack that no peer took are dropped.
      void tee?.release();
      if (code !== 0) log.warn('git exited with an error', { service, code, signal, stderr: stderr.trim().slice(0, 500) });
    });
    child.stdout!.pipe(res);
    body.pipe(child.stdin!);
  }

  /** Answers `err` without reading the body; the connection closes after the answer. */
  private refuse(req: http.IncomingMessage, res: http.ServerResponse, err: QuorumGitError): Promise<void> {
    res.setHeader('connection', 'close');
    res.once('finish', () => req.destroy());
    return Promise.reject(err);
  }

  receivePackExit(pid: number): Promise<void> | undefined {
    return this.receivePacks.get(pid)?.exit;
  }

  /** The streams to the peers of the pack receive-pack `pid` took in, if it was streamed ahead. */
  receivePackTee(pid: number): PackTee | undefined {
    return this.receivePacks.get(pid)?.tee;
  }

  /** Whether receive-pack `pid` hands its refs to the node through the proc-receive hook (handRefsToNode). */
  receivePackHandsRefs(pid: number): boolean {
    return this.receivePacks.get(pid)?.procReceive === true;
  }

  /** What rpc() was told about the sender of the push receive-pack `pid` serves. */
  receivePackOrigin(pid: number): unknown {
    return this.receivePacks.get(pid)?.origin;
  }

  /**
   * The pre-receive hook of receive-pack `pid` has handed its push to this node: from now on a
   * client going away does not stop that receive-pack (its push may be committed anywhere). Called
   * by the hook route before the push service runs the transaction. Returns false for an unknown
   * pid (not a receive-pack this node serves).
   */
  markHookStarted(pid: number): boolean {
    const entry = this.receivePacks.get(pid);
    if (entry === undefined) return false;
    entry.hookStarted = true;
    return true;
  }

  /** Stops every git process still running (node shutdown). */
  killAll(): void {
    for (const child of [...this.running, ...this.advertising]) child.kill('SIGTERM');
  }
}

/**
 * A ref advertisement being written by its git (status, headers, the service line, then git's
 * stdout), held back until it is wanted.
 */
export class PendingAdvertisement extends PassThrough {
  statusCode = 200;
  private readonly headers = new Map<string, string | number | readonly string[]>();
  private child: ChildProcess | undefined;

  constructor() {
    // Unbounded until sent: git's advertisement is the repo's ref list, and git is stopped anyway
    // if the client goes away or the advertisement is dropped.
    super({ highWaterMark: 1 << 20 });
    // Nothing is written here after discard (git's stdout is unpiped first); this is the backstop.
    this.on('error', () => undefined);
  }

  setHeader(name: string, value: string | number | readonly string[]): this {
    this.headers.set(name, value);
    return this;
  }

  /** Takes `child`'s stdout as the rest of the advertisement; `discard` stops it. */
  attach(child: ChildProcess): void {
    this.child = child;
    child.stdout!.pipe(this);
  }

  /** Sends what git wrote, and the rest as it comes; git is stopped if the client goes away. */
  send(res: http.ServerResponse): void {
    res.statusCode = this.statusCode;
    for (const [name, value] of this.headers) res.setHeader(name, value);
    res.once('close', () => {
      if (!res.writableFinished) this.discard();
    });
    // Cut short (git could not be started, or discarded): the client sees the connection drop
    // rather than wait for an end that never comes.
    if (this.destroyed) {
      res.destroy();
      return;
    }
    this.once('close', () => {
      if (!res.writableEnded) res.destroy();
    });
    this.pipe(res);
  }

  /** Not wanted after all, or its client went away: git is stopped. */
  discard(): void {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    child?.stdout?.unpipe(this);
    this.destroy();
  }
}
