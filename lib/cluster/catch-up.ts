import { createHash, randomBytes } from 'node:crypto';
import { systemClock, type Clock } from '../base/clock.js';
import { FETCH_NAMESPACE_PREFIX, LOST_FOUND_PREFIX } from '../core/repo-id.js';
import {
  applyRefEdits,
  deleteRefsUnder,
  readHead,
  readRefFiles,
  readRefs,
  readRefsUnder,
  setHead,
  unreachableTips,
} from '../git/git-refs.js';
import { runGit } from '../git/git.js';
import { addGitConfig } from '../git/hooks.js';
import type { Logger } from '../base/logger.js';
import type { CatchUpMode, CatchUpResult } from '../base/metrics.js';
import { SECRET_HEADER } from '../base/headers.js';
import type { PeerClient, RepoStateAnswer } from './peer-client.js';
import type { RepoStore } from '../storage/repo-store.js';
import { catchUpSource, copyStillValid, repairVerdict } from '../core/convergence.js';
import { compareVersions, type NodeId, type RepoVersion } from '../core/txn-core.js';
import type { TxnDriver } from './txn-driver.js';

// Repairs a replica that missed committed pushes (it was down, partitioned, or failed to apply):
// fetch from the peer at the newest version, make our refs exactly its refs, and only then take its
// generation. Nothing is destroyed: if a ref we drop or move held commits that no ref keeps any more,
// its old value is kept under refs/lost+found/ (hidden from clients) and reported in the log.
//
// The source's refs are fetched into a private namespace (refs/quorum-fetch/<stamp>/), never over our
// live refs; what would become unreachable is computed against the snapshot's refs while our old
// refs still exist; then every ref moves in one `update-ref` transaction that checks each old value,
// so a concurrent change makes it fail instead of being clobbered. refs/lost+found/ is ours, not the
// source's: a catch-up makes every ref outside it (and outside the fetch namespace) equal the
// snapshot, and leaves it alone.
//
// A repo whose catch-up or repair fails again and again is reported (log, /health), not retried in
// silence: see notConverging().

export const DIRECT_HEADER = 'x-quorum-direct';
/** Marks a catch-up's or repair's fetch, so the serving node counts its bytes as replica traffic. */
export const CATCH_UP_HEADER = 'x-quorum-catch-up';

/** Consecutive failures after which a replica is reported as not converging. */
export const NOT_CONVERGING_AFTER_FAILURES = 3;

/**
 * How long after its last failure a read that finds this replica behind may start another catch-up
 * of it (`nudge`): 1 s after one failure, doubling, at most 30 s. A catch-up that keeps failing (a
 * peer refusing the fetch, a full disk) costs a git process or four here and a listing of every ref
 * on a peer; started by every proxied read, it made a clone through a stale node 1.18x a direct one
 * instead of 1.06x (a lab copy of `npm run bench:proxy`). Those reads are proxied all the same, and
 * the sync loop keeps trying at its own interval.
 */
export function readRetryDelayMs(failures: number): number {
  return Math.min(30_000, 1000 * 2 ** Math.max(0, failures - 1));
}

export interface CatchUpOptions {
  driver: TxnDriver;
  store: RepoStore;
  client: PeerClient;
  logger: Logger;
  peers: readonly NodeId[];
  secret: string;
  timeoutMs: number;
  /** The node's clock (default the system's): stamps, failure times, the lost-objects walk's timeout. */
  clock?: Clock;
  /** Default NOT_CONVERGING_AFTER_FAILURES. */
  notConvergingAfterFailures?: number;
  /**
   * Called after a copy was decided on and before the repo's lock is taken: the window in which a
   * push may commit. A seam for specs; nothing in the node sets it.
   */
  beforeCopy?: (repoId: string, mode: 'catch-up' | 'repair') => void | Promise<void>;
  /** Told the result and duration of every catch-up run and repair check (the node's metrics). */
  observe?: (mode: CatchUpMode, result: CatchUpResult, seconds: number) => void;
}

/** A replica reported as not converging (GET /health `replicas_not_converging`). */
export interface NotConverging {
  repo_id: string;
  /** Consecutive failed catch-ups or repairs. */
  failures: number;
  /** When the first of them failed (ISO 8601). */
  since: string;
  last_error: string;
}

type CopyResult = 'moved' | 'skipped';

export class CatchUp {
  private readonly options: CatchUpOptions;
  private readonly clock: Clock;
  private readonly running = new Map<string, Promise<boolean>>();
  /** Consecutive failures per repo; an entry goes with the first success. */
  private readonly failing = new Map<string, { failures: number; sinceMs: number; lastMs: number; lastError: string }>();

  constructor(options: CatchUpOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  private get threshold(): number {
    return this.options.notConvergingAfterFailures ?? NOT_CONVERGING_AFTER_FAILURES;
  }

  /**
   * A read found this replica behind (and is proxied): catches the repo up as `request` does, unless
   * its last catch-up or repair failed less than readRetryDelayMs ago. Resolves true if it moved.
   */
  nudge(repoId: string): Promise<boolean> {
    const f = this.failing.get(repoId);
    if (f !== undefined && this.clock.now() - f.lastMs < readRetryDelayMs(f.failures)) return Promise.resolve(false);
    return this.request(repoId);
  }

  /** Catches one repo up; concurrent requests for the same repo share one run. Resolves true if it moved. */
  request(repoId: string): Promise<boolean> {
    let run = this.running.get(repoId);
    if (!run) {
      const started = this.clock.now();
      run = this.run(repoId)
        .then(
          (result) => {
            this.observed('catch-up', result, started);
            if (result !== 'skipped') this.succeeded(repoId);
            return result === 'moved';
          },
          (err) => {
            this.observed('catch-up', 'failed', started);
            this.options.logger.warn('catch-up failed', { repo_id: repoId, err: (err as Error).message });
            this.failed(repoId, err);
            return false;
          },
        )
        .finally(() => this.running.delete(repoId));
      this.running.set(repoId, run);
    }
    return run;
  }

  /** Repos whose replica here failed to catch up or repair NOT_CONVERGING_AFTER_FAILURES times in a row. */
  notConverging(): NotConverging[] {
    const out: NotConverging[] = [];
    for (const [repoId, f] of this.failing) {
      // A deleted repo has nothing left to converge.
      if (this.options.driver.participant.repo(repoId)?.state !== 'live') {
        this.failing.delete(repoId);
        continue;
      }
      if (f.failures < this.threshold) continue;
      out.push({ repo_id: repoId, failures: f.failures, since: new Date(f.sinceMs).toISOString(), last_error: f.lastError });
    }
    return out.sort((a, b) => a.repo_id.localeCompare(b.repo_id));
  }

  private observed(mode: CatchUpMode, result: CatchUpResult, startedMs: number): void {
    this.options.observe?.(mode, result, (this.clock.now() - startedMs) / 1000);
  }

  private failed(repoId: string, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    const f = this.failing.get(repoId) ?? { failures: 0, sinceMs: this.clock.now(), lastMs: 0, lastError: message };
    f.failures += 1;
    f.lastMs = this.clock.now();
    f.lastError = message;
    this.failing.set(repoId, f);
    if (f.failures === this.threshold) {
      this.options.logger.error('replica is not converging', {
        repo_id: repoId,
        failures: f.failures,
        since: new Date(f.sinceMs).toISOString(),
        err: message,
      });
    }
  }

  private succeeded(repoId: string): void {
    const f = this.failing.get(repoId);
    if (!f) return;
    this.failing.delete(repoId);
    if (f.failures >= this.threshold) this.options.logger.info('replica is converging again', { repo_id: repoId, failures: f.failures });
  }

  /** 'moved' when we took a newer version; 'current' when no peer is ahead; 'skipped' when a race says try later. */
  private async run(repoId: string): Promise<CopyResult | 'current'> {
    const { driver, client, peers } = this.options;
    const mine = driver.participant.repo(repoId);
    if (mine?.state !== 'live') return 'current';
    const states = await Promise.all(peers.map((p) => client.repoState(p, repoId, {}).then((s) => ({ peer: p, ...s }), () => undefined)));
    const best = catchUpSource(mine, states);
    if (!best) return 'current';
    const snapshot = await client.repoState(best.peer, repoId, { refs: true });
    if (!snapshot.refs || snapshot.epoch !== mine.epoch || snapshot.generation <= mine.generation) return 'skipped';
    return this.copyFrom(repoId, best.peer, snapshot, 'catch-up', { epoch: mine.epoch, generation: mine.generation });
  }

  /**
   * Spokes-style check of a few repos: our refs digest against the peers' at the same version. A
   * replica whose digest is in the minority has diverged; it repairs itself from the majority (its
   * own refs kept under refs/lost+found/). A tie is only reported: no side can be proven right, and
   * a tie that lasts makes the replica count as not converging.
   */
  async verify(repoIds: readonly string[]): Promise<void> {
    for (const repoId of repoIds) {
      const started = this.clock.now();
      try {
        const result = await this.verifyOne(repoId);
        this.observed('repair', result, started);
        if (result !== 'skipped') this.succeeded(repoId);
      } catch (err) {
        this.observed('repair', 'failed', started);
        this.options.logger.warn('repair failed', { repo_id: repoId, err: (err as Error).message });
        this.failed(repoId, err);
      }
    }
  }

  private async verifyOne(repoId: string): Promise<CopyResult | 'agreed' | 'not-mine'> {
    const { driver, client, peers, logger } = this.options;
    const mine = driver.participant.repo(repoId);
    if (mine?.state !== 'live' || driver.participant.lockedBy(repoId) !== undefined) return 'skipped';
    const own = await repoDigest(driver, this.options.store, repoId);
    const answers = await Promise.all(peers.map((p) => client.repoState(p, repoId, { digest: true }).then((s) => ({ peer: p, s }), () => undefined)));
    const groups = new Map<string, NodeId[]>([[own.digest, ['self']]]);
    for (const a of answers) {
      if (!a?.s.live || a.s.digest === undefined || compareVersions(a.s, own.version) !== 0) continue;
      groups.set(a.s.digest, [...(groups.get(a.s.digest) ?? []), a.peer]);
    }
    const verdict = repairVerdict(own.digest, [...groups].filter(([d]) => d !== own.digest).flatMap(([digest, nodes]) => nodes.map((peer) => ({ peer, digest }))));
    if (verdict.type === 'agreed') return 'agreed';
    const sizes = Object.fromEntries([...groups].map(([d, nodes]) => [d.slice(0, 12), nodes]));
    logger.error('replicas diverged at the same version', { repo_id: repoId, generation: own.version.generation, digests: sizes });
    if (verdict.type === 'not-mine') return 'not-mine';
    if (verdict.type === 'tie') throw new Error(`refs differ from a peer's at generation ${own.version.generation} with no majority to repair from`);
    const snapshot = await client.repoState(verdict.source, repoId, { refs: true });
    // The source's refs must still be the ones the majority agreed on, at the version compared.
    if (!snapshot.refs || snapshot.head === undefined || compareVersions(snapshot, own.version) !== 0 || refsDigest(snapshot.refs, snapshot.head) !== verdict.digest) return 'skipped';
    return this.copyFrom(repoId, verdict.source, snapshot, 'repair', own.version);
  }

  /**
   * Makes our refs outside refs/lost+found/ exactly the source's snapshot. For a catch-up we then
   * take its version; for a repair the version is already equal. `decidedAt` is our version when the
   * copy was decided on: a repair goes ahead only if we are still exactly there, a catch-up only if
   * we are still strictly behind the snapshot, both checked under the repo's lock, so a push
   * committed meanwhile is never undone.
   */
  private async copyFrom(repoId: string, source: NodeId, snapshot: RepoStateAnswer, mode: 'catch-up' | 'repair', decidedAt: RepoVersion): Promise<CopyResult> {
    const { driver, logger } = this.options;
    const target = snapshot.refs ?? {};
    let result: CopyResult = 'skipped';
    await this.options.beforeCopy?.(repoId, mode);
    await driver.withRepo(repoId, async () => {
      const mine = driver.participant.repo(repoId);
      const locked = driver.participant.lockedBy(repoId) !== undefined;
      if (!mine || !copyStillValid(mode, mine, locked, decidedAt, snapshot)) {
        if (mine?.state === 'live' && !locked) logger.info(`${mode} skipped: this replica's version moved meanwhile`, { repo_id: repoId, version: { epoch: mine.epoch, generation: mine.generation }, decided_at: decidedAt });
        return;
      }
      const repoPath = this.options.store.repoPath(repoId);
      const stamp = `${mine.epoch}.${mine.generation}-${this.clock.now()}-${randomBytes(3).toString('hex')}`;
      const namespace = `${FETCH_NAMESPACE_PREFIX}${stamp}/`;
      // A node that died mid-copy left its namespace behind; only copies (under this lock) make one.
      await deleteRefsUnder(repoPath, FETCH_NAMESPACE_PREFIX);
      try {
        await this.fetch(repoPath, `${source}/${repoId}.git`, namespace);
        const fetched = await readRefsUnder(repoPath, namespace);
        // The source moved on while we fetched: try again on the next round rather than claim a version.
        if (Object.entries(target).some(([ref, oid]) => fetched[`${namespace}${ref.slice('refs/'.length)}`] !== oid)) return;
        const before = await readRefs(repoPath);
        const leaving = Object.entries(before).filter(([ref, oid]) => target[ref] !== oid);
        // Our old refs still exist here, so this is the exact set the final refs would drop.
        const lost = await unreachableTips(repoPath, leaving.map(([, oid]) => oid), Object.values(target), this.options.timeoutMs, this.clock);
        const kept = leaving.filter(([, oid]) => lost.has(oid));
        const keep = kept.map(([ref, oid]) => `create ${LOST_FOUND_PREFIX}${stamp}/${ref.slice('refs/'.length)} ${oid}`);
        const deletes = Object.entries(before).filter(([ref]) => target[ref] === undefined).map(([ref, oid]) => `delete ${ref} ${oid}`);
        const moves = Object.entries(target).map(([ref, oid]) =>
          before[ref] === undefined ? `create ${ref} ${oid}` : before[ref] === oid ? `verify ${ref} ${oid}` : `update ${ref} ${oid} ${before[ref]}`,
        );
        if (nameClash(Object.keys(target).filter((r) => before[r] === undefined), Object.keys(before).filter((r) => target[r] === undefined))) {
          // git refuses to delete refs/heads/a and create refs/heads/a/b in one transaction. The kept
          // copies and the deletes go first; if the second step fails, nothing is lost (all kept) and
          // the next round finishes the job, since we have not taken the version.
          await applyRefEdits(repoPath, [...keep, ...deletes]);
          await applyRefEdits(repoPath, moves);
        } else {
          await applyRefEdits(repoPath, [...keep, ...deletes, ...moves]);
        }
        if (kept.length > 0) logger.warn(`${mode} kept refs only this replica had`, { repo_id: repoId, refs: kept.map(([r]) => r), under: `${LOST_FOUND_PREFIX}${stamp}/` });
        if (snapshot.head && (await readHead(repoPath)) !== snapshot.head) await setHead(repoPath, snapshot.head);
        const after = await readRefs(repoPath);
        const same = Object.keys(after).length === Object.keys(target).length && Object.entries(target).every(([r, o]) => after[r] === o);
        if (!same) throw new Error(`${mode}: refs differ from ${source}'s snapshot after the copy`);
        if (mode === 'catch-up' && !(await driver.caughtUp(repoId, { epoch: snapshot.epoch, generation: snapshot.generation }))) {
          throw new Error(`catch-up: the replica did not take generation ${snapshot.generation} after copying its refs`);
        }
        result = 'moved';
        logger.info(mode === 'repair' ? 'repaired' : 'caught up', { repo_id: repoId, from: source, generation: snapshot.generation });
      } finally {
        // The fetched refs only kept the objects alive until our refs held them; a failure here
        // leaves the namespace for the next copy to remove.
        await deleteRefsUnder(repoPath, namespace).catch((err) => logger.warn('could not remove the fetch namespace', { repo_id: repoId, namespace, err: (err as Error).message }));
      }
    });
    return result;
  }

  private async fetch(repoPath: string, url: string, namespace: string): Promise<void> {
    const env = { ...process.env, GIT_TERMINAL_PROMPT: '0' };
    addGitConfig(env, [
      ['http.extraHeader', `${SECRET_HEADER}: ${this.options.secret}`],
      ['http.extraHeader', `${DIRECT_HEADER}: 1`],
      ['http.extraHeader', `${CATCH_UP_HEADER}: 1`],
    ]);
    // The source hides its private refs anyway (transfer.hideRefs); the negative refspecs make sure.
    const refspecs = [`+refs/*:${namespace}*`, `^${LOST_FOUND_PREFIX}*`, `^${FETCH_NAMESPACE_PREFIX}*`];
    await runGit(['fetch', '--quiet', '--no-tags', '--no-write-fetch-head', '--no-auto-gc', url, ...refspecs], {
      cwd: repoPath,
      env,
      timeoutMs: this.options.timeoutMs,
    });
  }
}

/** True if a ref to create and a ref to delete are one another's directory (refs/heads/a vs refs/heads/a/b). */
function nameClash(created: readonly string[], deleted: readonly string[]): boolean {
  const dirsOf = (refs: readonly string[]): Set<string> => {
    const dirs = new Set<string>();
    for (const ref of refs) {
      const parts = ref.split('/');
      for (let i = 1; i < parts.length; i += 1) dirs.add(parts.slice(0, i).join('/'));
    }
    return dirs;
  };
  const createdDirs = dirsOf(created);
  const deletedDirs = dirsOf(deleted);
  return deleted.some((r) => createdDirs.has(r)) || created.some((r) => deletedDirs.has(r));
}

/** A replica's refs and HEAD, read together with its version, and their digest. */
export async function repoDigest(
  driver: TxnDriver,
  store: RepoStore,
  repoId: string,
  read: 'digest' | 'refs' = 'digest',
): Promise<{ version: RepoVersion; refs: Record<string, string>; head: string; digest: string }> {
  const repoPath = store.repoPath(repoId);
  return driver.withRepoResult(repoId, async () => {
    const version = driver.participant.versionOf(repoId);
    // A digest alone (the divergence check, here and on every peer, every few seconds) is read from
    // the ref files; refs to copy are listed by git, which leaves out a ref whose object is missing
    // as its fetch would (the copy checks them against the digest compared, and skips on a mismatch).
    const [refs, head] = await Promise.all([read === 'digest' ? readRefFiles(repoPath) : readRefs(repoPath), readHead(repoPath)]);
    return { version, refs, head, digest: refsDigest(refs, head) };
  });
}

/** sha256 over HEAD and every ref, in name order: equal digests mean identical refs. */
export function refsDigest(refs: Readonly<Record<string, string>>, head: string): string {
  const hash = createHash('sha256').update(`HEAD ${head}\n`);
  for (const ref of Object.keys(refs).sort()) hash.update(`${refs[ref]} ${ref}\n`);
  return hash.digest('hex');
}
