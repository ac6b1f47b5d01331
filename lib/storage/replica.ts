import { promises as fs } from 'node:fs';
import { systemClock, type Clock } from '../base/clock.js';
import type { RepoStore } from './repo-store.js';
import { applyUpdates, expectRefsUnlocked, installPackBuffers, installPackFiles, readHead, readRefValues, readRefs, listPackKeeps, releasePackKeeps, setHead } from '../git/git-refs.js';
import { RefTransactions } from '../git/ref-txn.js';
import type { Logger } from '../base/logger.js';
import type { RefUpdate } from '../core/txn-core.js';

// The disk side of one node's replica, as the transaction driver (txn-driver.ts) sees it: repos
// staged, renamed into place or removed, a push's refs read, locked at prepare and moved at commit.
// The driver holds no file-system or git knowledge of its own, so the seeded simulation
// (spec/unit/sim.ts) runs the real driver over an in-memory replica with the same contract:
// - every step is idempotent per txnId (a restart replays decided transactions);
// - stagePush locks a push's refs until applyPush or discard, on the peers and, when receive-pack
//   hands its refs to the node (a push of many refs), on the coordinator; a crash loses those locks
//   (git aborts the open transaction when its stdin closes) but never refs already moved;
// - applyPush without a held transaction, or told the held one may not be committed, applies the
//   updates afresh (refs already at their new values are left alone).

/**
 * Where a staged push's objects are. The coordinator's (`own`): in receive-pack's quarantine (its
 * object directory, '' for a push that brought none) when receive-pack hands the refs to the node;
 * without `quarantine`, receive-pack moves the refs itself. A peer's: inline or streamed ahead.
 */
export type PushSource = { own: true; quarantine?: string } | { own: false; inline?: Readonly<Record<string, Buffer>> };

export interface ReplicaStore {
  /** Prepares the layout and clears what dead gits left (lock files, quarantines); returns the paths cleared. */
  init(keepStaging: ReadonlySet<string>): Promise<string[]>;
  exists(repoId: string): Promise<boolean>;
  /** Makes a fresh empty repo appear at the repo's place, replacing what was there. */
  recreate(repoId: string, reason: string): Promise<void>;
  remove(repoId: string, reason: string): Promise<void>;
  stageCreate(txnId: string): Promise<void>;
  commitCreate(txnId: string, repoId: string): Promise<void>;
  /** The repo's refs: all of them, or only `refs` (those missing are absent from the answer). */
  readRefs(repoId: string, refs?: readonly string[]): Promise<Record<string, string>>;
  /**
   * Stages a push: holds its refs locked in git, their new values written and durable. A peer's
   * objects are installed first; the coordinator's own are still in receive-pack's quarantine, which
   * git is pointed at to check them. A coordinator's push that receive-pack moves itself (no
   * `quarantine`) only has its refs checked for locks that would stand in receive-pack's way.
   */
  stagePush(txnId: string, repoId: string, updates: readonly RefUpdate[], source: PushSource): Promise<void>;
  /**
   * Moves a committed push's refs (idempotent) and points HEAD at `head` when given. `prepared`
   * false: the transaction held since the stage may not be committed (the coordinator's receive-pack
   * exited before its objects were in place), so it is dropped and the push applied afresh.
   */
  applyPush(txnId: string, repoId: string, updates: readonly RefUpdate[], head: string | undefined, prepared?: boolean): Promise<void>;
  /** Undoes whatever a transaction staged here: its held ref locks, then its files. */
  discard(txnId: string): Promise<void>;
  /** Drops shipped packs whose upload was abandoned; returns the txn ids removed. */
  sweepIncoming(inUse: (txnId: string) => boolean, idleMs: number, nowMs: number): Promise<string[]>;
  /** Ends the git sessions held (a prepared push's ref locks are released by git). */
  close(): void;
}

/** How long the coordinator's replica waits for a pushed ref's lock to go (git's own lock retry is 100 ms). */
const REF_LOCK_WAIT_MS = 100;

/** The real replica: RepoStore for the files, git for the refs. */
export class GitReplica implements ReplicaStore {
  /** A peer's push holds its refs locked in git from prepare to commit (lib/git/ref-txn.ts). */
  private readonly refTxns: RefTransactions;
  /** The repo of each staged peer push whose packs are kept (releasePackKeeps), by txn id; refilled at init. */
  private readonly keptIn = new Map<string, string>();

  constructor(
    private readonly store: RepoStore,
    private readonly logger: Logger,
    private readonly clock: Clock = systemClock,
  ) {
    this.refTxns = new RefTransactions({ maxSpares: 64, idleMs: 60_000, clock });
  }

  /**
   * Also finds the pack keeps a previous life left: those of transactions still held are remembered
   * (their apply or discard releases them), the others (a crash between install and apply or discard)
   * are removed.
   */
  async init(keepStaging: ReadonlySet<string>): Promise<string[]> {
    const cleared = await this.store.init(keepStaging);
    for (const repo of await this.store.repoDirs()) {
      for (const { file, txnId } of await listPackKeeps(repo)) {
        if (keepStaging.has(txnId)) {
          this.keptIn.set(txnId, repo);
        } else {
          await fs.rm(file, { force: true });
          cleared.push(file);
        }
      }
    }
    return cleared;
  }

  exists(repoId: string): Promise<boolean> {
    return this.store.exists(repoId);
  }

  recreate(repoId: string, reason: string): Promise<void> {
    return this.store.recreate(repoId, reason);
  }

  remove(repoId: string, reason: string): Promise<void> {
    return this.store.remove(repoId, reason);
  }

  stageCreate(txnId: string): Promise<void> {
    return this.store.stageCreate(txnId);
  }

  commitCreate(txnId: string, repoId: string): Promise<void> {
    return this.store.commitCreate(txnId, repoId);
  }

  readRefs(repoId: string, refs?: readonly string[]): Promise<Record<string, string>> {
    const repoPath = this.store.repoPath(repoId);
    return refs === undefined ? readRefs(repoPath) : readRefValues(repoPath, refs);
  }

  async stagePush(txnId: string, repoId: string, updates: readonly RefUpdate[], source: PushSource): Promise<void> {
    const repoPath = this.store.repoPath(repoId);
    if (source.own) {
      if (source.quarantine === undefined) {
        await expectRefsUnlocked(repoPath, updates.map((u) => u.ref), REF_LOCK_WAIT_MS, this.clock);
        return;
      }
      // git reads the pushed objects from the quarantine, the rest from the repo (as receive-pack's
      // hooks do); the session is not kept for another push, whose quarantine differs.
      await this.refTxns.prepare(txnId, repoPath, updates, { quarantine: source.quarantine });
      return;
    }
    // Kept (a .keep per pack) until the push is applied or dropped: a background gc must not take
    // objects no ref names yet (lib/git/git-refs.ts keepNote).
    this.keptIn.set(txnId, repoPath);
    if (source.inline) installPackBuffers(repoPath, source.inline, txnId);
    else await installPackFiles(repoPath, this.store.incomingDir(txnId), txnId);
    await this.refTxns.prepare(txnId, repoPath, updates);
  }

  /**
   * Commits the ref transaction prepared with the vote, or, with none held (a transaction replayed
   * after a restart, a session that failed, a coordinator whose vote was not needed) or told not to
   * (`prepared` false), applies the updates afresh, which is idempotent.
   */
  async applyPush(txnId: string, repoId: string, updates: readonly RefUpdate[], head: string | undefined, prepared = true): Promise<void> {
    const repoPath = this.store.repoPath(repoId);
    if (!prepared) await this.refTxns.abort(txnId);
    let committed = false;
    try {
      committed = await this.refTxns.commit(txnId);
    } catch (err) {
      this.logger.warn('prepared ref transaction failed to commit; applying the push afresh', { txn_id: txnId, err: (err as Error).message });
    }
    if (!committed) await applyUpdates(repoPath, updates, head);
    else if (head !== undefined && (await readHead(repoPath)) !== head) await setHead(repoPath, head);
    // The refs name the objects now (the coordinator's own push has no keep of ours: nothing to list).
    if (this.keptIn.delete(txnId)) await releasePackKeeps(repoPath, txnId);
  }

  async discard(txnId: string): Promise<void> {
    await this.refTxns.abort(txnId);
    const kept = this.keptIn.get(txnId);
    this.keptIn.delete(txnId);
    if (kept !== undefined) await releasePackKeeps(kept, txnId);
    await this.store.discard(txnId);
  }

  sweepIncoming(inUse: (txnId: string) => boolean, idleMs: number, nowMs: number): Promise<string[]> {
    return this.store.sweepIncoming(inUse, idleMs, nowMs);
  }

  /** A peer's prepare of many refs keeps git's fsync of each lock instead of one file-system sync. */
  keepGitFsyncs(): void {
    this.refTxns.keepGitFsyncs();
  }

  close(): void {
    this.refTxns.close();
  }
}
