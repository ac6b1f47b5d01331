import type { ChildProcess } from 'node:child_process';
import type http from 'node:http';
import { PassThrough, type Readable } from 'node:stream';
import nodeGitServer from 'node-git-server';
import type { Logger } from './logger.js';
import type { GitService } from './router.js';

const { Git, Service, infoResponse } = nodeGitServer;

// Git's smart HTTP through node-git-server, hardened. The router has already validated the name and
// checked that the repo exists, so node-git-server is only asked to run git:
// - info/refs goes through its infoResponse (autoCreate off, so it can never create a repo);
// - the RPC POSTs go through its Service object, accepted at once: its own accept path waits for a
//   push/fetch event parsed from the first request chunk, which never fires for refs outside
//   heads/tags (refs/notes/*) and so hangs.
// What it lacks is added here: an 'error' listener on every duplex (a client abort otherwise crashes
// the process) and killing git when the client goes away (otherwise git lives on, blocked on a pipe).

export class GitHttp {
  private readonly git: InstanceType<typeof Git>;
  private readonly logger: Logger;
  private readonly running = new Set<ChildProcess>();
  /** receive-pack processes by pid: the pre-receive hook names its parent, and a push's own commit waits for its exit. */
  private readonly exits = new Map<number, Promise<void>>();

  constructor(repoPath: (repoId: string) => string, logger: Logger) {
    this.logger = logger;
    this.git = new Git((repo?: string) => repoPath(repo ?? ''), { autoCreate: false });
    this.git.on('error', (err: Error) => this.logger.warn('git server error', { err: err.message }));
  }

  /** Number of git processes serving requests right now. */
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

  rpc(req: http.IncomingMessage, res: http.ServerResponse, repoId: string, service: GitService, log: Logger): void {
    res.setHeader('content-type', `application/x-git-${service}-result`);
    res.setHeader('cache-control', 'no-cache, max-age=0, must-revalidate');
    const action = new Service({ repo: repoId, service, cwd: this.git.dirMap(repoId) }, req, res);
    action.on('error', (err: Error) => log.warn('git request stream error', { err: err.message }));
    action.on('service', (child: ChildProcess) => {
      this.running.add(child);
      if (service === 'receive-pack' && child.pid !== undefined) {
        const pid = child.pid;
        this.exits.set(
          pid,
          new Promise<void>((resolve) =>
            child.once('exit', () => {
              this.exits.delete(pid);
              resolve();
            }),
          ),
        );
      }
      child.stdin?.on('error', (err) => log.debug('git stdin closed', { err: err.message }));
      child.stdout?.on('error', (err) => log.debug('git stdout closed', { err: err.message }));
      child.once('exit', () => this.running.delete(child));
      res.once('close', () => {
        if (!res.writableFinished && child.exitCode === null) {
          log.warn('client went away; stopping git', { service });
          child.kill('SIGTERM');
        }
      });
    });
    action.accept();
  }

  receivePackExit(pid: number): Promise<void> | undefined {
    return this.exits.get(pid);
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
