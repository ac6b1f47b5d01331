import { statSync } from 'node:fs';
import { systemClock, type Clock } from '../base/clock.js';
import { syncFileSystem } from '../base/durable-fs.js';
import { UpdateRefSession, refEdit } from './git-refs.js';
import type { RefUpdate } from '../core/txn-core.js';

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
//
// The vote promises that the new values survive a power loss once committed: the lock files hold
// them and the commit only renames the locks, so they must be durable before the vote. git fsyncs
// each lock as it writes it (core.fsync reference), one after another: for a push of hundreds of
// refs most of the prepare. From BULK_REF_UPDATES refs on, the session's git runs without that and
// the node syncs the whole file system once (syncfs) after `prepare` answered and before the vote:
// the same files (and the packed-refs.new a deletion of a packed ref writes) durable at the same
// point, no new crash state, in a third of the time. Fewer refs keep git's own fsyncs: a syncfs
// also waits for whatever else is dirty on the disk (another push's pack being written), which a
// few fsyncs do not.

export interface RefTransactionOptions {
  maxSpares: number;
  idleMs: number;
  /** The node's clock (default the system's: its timers are unref'd, so a spare never holds a stopping process). */
  clock?: Clock;
  /** Makes a prepared bulk transaction's lock files durable (default syncfs of the repo's file system; specs record the calls). */
  syncLocks?: (repoPath: string) => Promise<void>;
}

/** From this many refs on, a transaction's locks are made durable by one syncfs instead of git's fsync per lock. */
export const BULK_REF_UPDATES = 32;

/** How long the syncfs of a bulk prepare may take before the prepare fails (and the peer votes no). */
const SYNC_LOCKS_TIMEOUT_MS = 60_000;

/** A session and what the pool knows of it. */
interface Session {
  git: UpdateRefSession;
  /** The inode of the repo directory it was started in. */
  ino: number;
  /** Kept as the repo's spare once its transaction is over (not a coordinator's, tied to one quarantine). */
  reusable: boolean;
  idleTimer?: unknown;
}

export class RefTransactions {
  private readonly options: RefTransactionOptions;
  private readonly clock: Clock;
  /** Prepared transactions by txn id. */
  private readonly held = new Map<string, Session>();
  /** Idle sessions by repo path, least recently used first. */
  private readonly spares = new Map<string, Session>();
  /** From how many refs a prepare syncs the file system instead of git's fsync per lock. */
  private bulkFrom = BULK_REF_UPDATES;

  constructor(options: RefTransactionOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  /**
   * Locks the refs of a push and checks their old values and that the new objects exist (installed
   * already, or in `quarantine`: the object directory of the coordinator's receive-pack, '' if the
   * push brought none). Throws if git refuses; nothing is then held.
   */
  async prepare(txnId: string, repoPath: string, updates: readonly RefUpdate[], options: { quarantine?: string } = {}): Promise<void> {
    if (this.held.has(txnId)) return;
    const { ino } = statSync(repoPath);
    const bulk = updates.length >= this.bulkFrom;
    let session: Session | undefined;
    if (options.quarantine !== undefined) {
      session = { git: new UpdateRefSession(repoPath, { syncsLocks: bulk, quarantine: options.quarantine }), ino, reusable: false };
    } else {
      session = this.spares.get(repoPath);
      this.spares.delete(repoPath);
      if (session) this.clock.clearTimeout(session.idleTimer);
      if (!session || !session.git.alive || session.ino !== ino || session.git.syncsLocks !== bulk) {
        session?.git.close();
        session = { git: new UpdateRefSession(repoPath, { syncsLocks: bulk }), ino, reusable: true };
      }
    }
    this.held.set(txnId, session);
    try {
      await session.git.send(['start', ...updates.map(refEdit), 'prepare'], 2);
      if (bulk) await (this.options.syncLocks ?? ((p) => syncFileSystem(p, SYNC_LOCKS_TIMEOUT_MS, this.clock)))(repoPath);
    } catch (err) {
      this.held.delete(txnId);
      session.git.close();
      throw err;
    }
  }

  /** Every prepare keeps git's fsync of each lock (where no file-system sync works: lib/node.ts checks at start). */
  keepGitFsyncs(): void {
    this.bulkFrom = Infinity;
  }

  /** Commits a prepared transaction. False if none is held here for it (the caller applies it another way). */
  async commit(txnId: string): Promise<boolean> {
    const session = this.held.get(txnId);
    if (!session) return false;
    this.held.delete(txnId);
    try {
      await session.git.send(['commit'], 1);
    } catch (err) {
      session.git.close();
      throw err;
    }
    this.keepSpare(session);
    return true;
  }

  /** Drops a prepared transaction: git releases the locks and changes nothing; resolves once git has exited. */
  async abort(txnId: string): Promise<void> {
    const session = this.held.get(txnId);
    if (!session) return;
    this.held.delete(txnId);
    session.git.close();
    await session.git.exited;
  }

  private keepSpare(session: Session): void {
    if (!session.reusable) {
      session.git.close();
      return;
    }
    if (!session.git.alive) return;
    const { repoPath } = session.git;
    const previous = this.spares.get(repoPath);
    if (previous && previous !== session) this.end(previous);
    this.spares.delete(repoPath);
    this.spares.set(repoPath, session);
    session.idleTimer = this.clock.setTimeout(() => {
      if (this.spares.get(repoPath) === session) this.spares.delete(repoPath);
      session.git.close();
    }, this.options.idleMs);
    while (this.spares.size > this.options.maxSpares) {
      const [oldestPath, oldest] = this.spares.entries().next().value as [string, Session];
      this.spares.delete(oldestPath);
      this.end(oldest);
    }
  }

  private end(session: Session): void {
    this.clock.clearTimeout(session.idleTimer);
    session.git.close();
  }

  /** Ends every session (open transactions are aborted by git). */
  close(): void {
    for (const session of [...this.held.values(), ...this.spares.values()]) this.end(session);
    this.held.clear();
    this.spares.clear();
  }
}
