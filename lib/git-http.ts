import { spawn, type ChildProcess } from 'node:child_process';
import type http from 'node:http';
import { PassThrough, Transform, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import nodeGitServer from 'node-git-server';
import { systemClock, type Clock } from './clock.js';
import { QuorumGitError } from './errors.js';
import { GitSlots, RequestHeadScanner, bodyDecoding } from './git-rpc.js';
import type { Logger } from './logger.js';
import type { GitService } from './router.js';

const { Git, infoResponse } = nodeGitServer;

// Git's smart HTTP. The router has already validated the name and checked that the repo exists.
//
// info/refs goes through node-git-server's infoResponse (autoCreate off, so it can never create a
// repo): it reads no request body, and it works.
//
// The RPC POSTs (upload-pack, receive-pack) are our own spawn of `git <service> --stateless-rpc <dir>`,
// not node-git-server's Service. Service cannot be fixed by wrapping: it pipes the request into zlib
// before we get a say (a gzip body that is not gzip threw an unhandled error and ended the process;
// `deflate` was compressed instead of inflated), runs a quadratic regular expression over the first
// chunk (64 KB of junk held the event loop ~5 s), starts git before any byte arrives, and waits for
// push/fetch events that never fire for refs outside heads/tags. Here instead:
// - the body is decoded by us (gzip, deflate = zlib inflate) with an error handler on every stream;
//   a body that fails to decode is a 400, an unknown content-encoding a 415;
// - the request head (pkt-lines up to the first flush) is checked by a linear, capped scanner
//   (lib/git-rpc.ts); junk is a 400 and git is never started for it;
// - git starts only once the first command has arrived, and inherits process.env (our hooks and
//   config, lib/hooks.ts applyGitEnvironment);
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
}

interface ReceivePack {
  exit: Promise<void>;
  hookStarted: boolean;
}

export class GitHttp {
  private readonly git: InstanceType<typeof Git>;
  private readonly logger: Logger;
  private readonly limits: GitHttpLimits;
  private readonly slots: GitSlots;
  private readonly running = new Set<ChildProcess>();
  /** receive-pack processes by pid: the pre-receive hook names its parent, and a push's own commit waits for its exit. */
  private readonly receivePacks = new Map<number, ReceivePack>();

  private readonly clock: Clock;

  constructor(repoPath: (repoId: string) => string, logger: Logger, limits: GitHttpLimits, clock: Clock = systemClock) {
    this.clock = clock;
    this.logger = logger;
    this.limits = limits;
    this.slots = new GitSlots(limits.maxProcesses, limits.maxProcessesPerClient);
    this.git = new Git((repo?: string) => repoPath(repo ?? ''), { autoCreate: false });
    this.git.on('error', (err: Error) => this.logger.warn('git server error', { err: err.message }));
  }

  /** Number of git RPC processes serving requests right now. */
  get activeProcesses(): number {
    return this.running.size;
  }

  infoRefs(req: http.IncomingMessage, res: http.ServerResponse, repoId: string, service: GitService): void {
    // infoResponse pipes git's stdout into the response without keeping the process; the 'pipe'
    // event hands us the stream, and destroying it on an early close ends git with SIGPIPE.
    res.once('pipe', (source: Readable) => {
      res.once('close', () => {
        if (!res.writableFinished) source.destroy();
      });
    });
    infoResponse(this.git, repoId, service, req, res);
  }

  /**
   * Starts the ref advertisement before we know whether to serve it (the read's freshness check runs
   * meanwhile): git's start-up and the peers' round trip overlap instead of adding up. Its output is
   * held until `send`; `discard` ends git unread.
   */
  prepareInfoRefs(req: http.IncomingMessage, repoId: string, service: GitService): PendingAdvertisement {
    const pending = new PendingAdvertisement();
    infoResponse(this.git, repoId, service, req, pending as unknown as http.ServerResponse);
    return pending;
  }

  /**
   * Serves one RPC POST. Resolves when the response is over; rejects with a QuorumGitError the
   * caller turns into the answer while nothing was sent yet (after that the response is cut off).
   * `client` is the address the per-client limit charges.
   */
  rpc(req: http.IncomingMessage, res: http.ServerResponse, repoId: string, service: GitService, log: Logger, client: string): Promise<void> {
    const decoding = bodyDecoding(req.headers['content-encoding']);
    if (decoding === undefined) return this.refuse(req, res, new QuorumGitError('unsupported_media_type', `content-encoding ${String(req.headers['content-encoding'])} is not supported; use gzip or none`));
    const slot = this.slots.take(client);
    if ('refused' in slot) {
      log.warn('git request refused: too many at once', { service, client, per: slot.refused });
      res.setHeader('retry-after', String(GIT_BUSY_RETRY_AFTER_S));
      const what = slot.refused === 'node' ? 'this node serves' : 'this node serves one client';
      return this.refuse(req, res, new QuorumGitError('git_busy', `${what} at most ${slot.refused === 'node' ? this.limits.maxProcesses : this.limits.maxProcessesPerClient} git requests at once; retry in ${GIT_BUSY_RETRY_AFTER_S} s`));
    }
    const dir = this.git.dirMap(repoId);
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
      const start = (): void => this.startRpc(service, dir, log, gate, res, (c) => (child = c), slot.release, arm);
      const gate = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          if (scanner.state.state === 'more') {
            const verdict = scanner.feed(chunk);
            if (verdict.state === 'invalid') return done(new QuorumGitError('invalid_body', verdict.message));
            if (!scanner.firstLineChecked) {
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
  private startRpc(service: GitService, dir: string, log: Logger, body: Readable, res: http.ServerResponse, started: (child: ChildProcess) => void, release: () => void, progress: () => void): void {
    res.setHeader('content-type', `application/x-git-${service}-result`);
    res.setHeader('cache-control', 'no-cache, max-age=0, must-revalidate');
    // `git <service>` runs the builtin in this very process, so child.pid is the pid the pre-receive
    // hook reports as its parent. The environment is process.env (hooks path, config).
    const child = spawn('git', [service, '--stateless-rpc', dir], { stdio: ['pipe', 'pipe', 'pipe'] });
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
    for (const child of this.running) child.kill('SIGTERM');
  }
}

/**
 * What node-git-server's infoResponse writes to (it sets headers and a status, writes the service
 * line and pipes git's stdout), held back until the advertisement is wanted.
 */
export class PendingAdvertisement extends PassThrough {
  statusCode = 200;
  private readonly headers = new Map<string, string | number | readonly string[]>();
  private source: Readable | undefined;

  constructor() {
    // Unbounded until sent: git's advertisement is the repo's ref list, and git is stopped anyway
    // if the client goes away or the advertisement is dropped.
    super({ highWaterMark: 1 << 20 });
    this.on('pipe', (source: Readable) => (this.source = source));
  }

  setHeader(name: string, value: string | number | readonly string[]): this {
    this.headers.set(name, value);
    return this;
  }

  /** Sends what git wrote, and the rest as it comes; git is stopped if the client goes away. */
  send(res: http.ServerResponse): void {
    res.statusCode = this.statusCode;
    for (const [name, value] of this.headers) res.setHeader(name, value);
    res.once('close', () => {
      if (!res.writableFinished) this.discard();
    });
    this.pipe(res);
  }

  /** Not wanted after all: git is stopped (its pipe closes under it). */
  discard(): void {
    this.source?.destroy();
    this.destroy();
  }
}
