import { spawn, type ChildProcess } from 'node:child_process';
import { statSync } from 'node:fs';
import { refEdit } from './git-refs.js';
import type { RefUpdate } from './txn-core.js';

// A peer's ref transaction for a push, held open from the 2PC prepare to the commit, as Gitaly and
// Spokes do it: `git update-ref --stdin` gets `start`, the updates and `prepare` when the peer votes
// (git takes every ref's lock and checks its old value and that the new object exists), and only
// `commit` when the decision arrives, which renames the locks into place. The commit on the push's
// critical path is then a line written to a running git, not a git process started and a repo opened.
//
// A session whose transaction committed stays open as the repo's spare for the next push (`start`
// begins a new transaction in the same session), so a busy repo's peers start no git at all per
// push. Spares are few (LRU), end after a quiet while, and are only reused for the very directory
// they were started in (its inode is compared): a repo deleted and created again gets a new one.
// If this node dies, each session's stdin closes and git aborts the open transaction itself,
// removing its locks.

export interface RefTransactionOptions {
  maxSpares: number;
  idleMs: number;
}

export class RefTransactionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RefTransactionError';
  }
}

class UpdateRefSession {
  readonly repoPath: string;
  readonly ino: number;
  private readonly child: ChildProcess;
  private readonly waiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  private stdout = '';
  private stderr = '';
  private exited = false;
  idleTimer: NodeJS.Timeout | undefined;

  constructor(repoPath: string, ino: number) {
    this.repoPath = repoPath;
    this.ino = ino;
    this.child = spawn('git', ['update-ref', '--stdin'], { cwd: repoPath, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (chunk: Buffer) => {
      this.stdout += chunk.toString();
      let nl: number;
      while ((nl = this.stdout.indexOf('\n')) >= 0) {
        const line = this.stdout.slice(0, nl);
        this.stdout = this.stdout.slice(nl + 1);
        // Each of start/prepare/commit answers "<command>: ok"; a failure ends the process instead.
        if (line.endsWith(': ok')) this.waiters.shift()?.resolve();
      }
    });
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr = (this.stderr + chunk.toString()).slice(-4000)));
    this.child.stdin!.on('error', () => undefined);
    const ended = (why: string): void => {
      this.exited = true;
      const err = new RefTransactionError(`git update-ref: ${this.stderr.trim() || why}`);
      for (const w of this.waiters.splice(0)) w.reject(err);
    };
    this.child.on('error', (err) => ended(err.message));
    this.child.on('close', (code, signal) => ended(`exited (${signal ?? code})`));
  }

  get alive(): boolean {
    return !this.exited;
  }

  /** Writes commands; resolves when `answers` of them said ok. */
  send(lines: readonly string[], answers: number): Promise<void> {
    if (this.exited) return Promise.reject(new RefTransactionError(`git update-ref: ${this.stderr.trim() || 'session ended'}`));
    const done = Array.from({ length: answers }, () => new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject })));
    this.child.stdin!.write(lines.join('\n') + '\n');
    return Promise.all(done).then(() => undefined);
  }

  /** Ends the session: an open transaction is aborted by git, its locks removed. */
  close(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.child.stdin!.end();
  }
}

export class RefTransactions {
  private readonly options: RefTransactionOptions;
  /** Prepared transactions by txn id. */
  private readonly held = new Map<string, UpdateRefSession>();
  /** Idle sessions by repo path, least recently used first. */
  private readonly spares = new Map<string, UpdateRefSession>();

  constructor(options: RefTransactionOptions) {
    this.options = options;
  }

  /**
   * Locks the refs of a push and checks their old values and that the new objects exist (they must
   * be installed already). Throws if git refuses; nothing is then held.
   */
  async prepare(txnId: string, repoPath: string, updates: readonly RefUpdate[]): Promise<void> {
    if (this.held.has(txnId)) return;
    const { ino } = statSync(repoPath);
    let session = this.spares.get(repoPath);
    this.spares.delete(repoPath);
    if (session?.idleTimer) clearTimeout(session.idleTimer);
    if (!session || !session.alive || session.ino !== ino) {
      session?.close();
      session = new UpdateRefSession(repoPath, ino);
    }
    this.held.set(txnId, session);
    try {
      await session.send(['start', ...updates.map(refEdit), 'prepare'], 2);
    } catch (err) {
      this.held.delete(txnId);
      session.close();
      throw err;
    }
  }

  /** Commits a prepared transaction. False if none is held here for it (the caller applies it another way). */
  async commit(txnId: string): Promise<boolean> {
    const session = this.held.get(txnId);
    if (!session) return false;
    this.held.delete(txnId);
    try {
      await session.send(['commit'], 1);
    } catch (err) {
      session.close();
      throw err;
    }
    this.keepSpare(session);
    return true;
  }

  /** Drops a prepared transaction: git releases the locks and changes nothing. */
  abort(txnId: string): void {
    const session = this.held.get(txnId);
    if (!session) return;
    this.held.delete(txnId);
    session.close();
  }

  private keepSpare(session: UpdateRefSession): void {
    if (!session.alive) return;
    const previous = this.spares.get(session.repoPath);
    if (previous && previous !== session) previous.close();
    this.spares.delete(session.repoPath);
    this.spares.set(session.repoPath, session);
    session.idleTimer = setTimeout(() => {
      if (this.spares.get(session.repoPath) === session) this.spares.delete(session.repoPath);
      session.close();
    }, this.options.idleMs);
    session.idleTimer.unref();
    while (this.spares.size > this.options.maxSpares) {
      const [oldestPath, oldest] = this.spares.entries().next().value as [string, UpdateRefSession];
      this.spares.delete(oldestPath);
      oldest.close();
    }
  }

  /** Ends every session (open transactions are aborted by git). */
  close(): void {
    for (const session of [...this.held.values(), ...this.spares.values()]) session.close();
    this.held.clear();
    this.spares.clear();
  }
}
