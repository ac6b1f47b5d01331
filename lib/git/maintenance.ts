import { spawn, type ChildProcess } from 'node:child_process';
import { systemClock, type Clock } from '../base/clock.js';
import type { Logger } from '../base/logger.js';
import { countLooseRefs, packedRefsBytes } from './git-refs.js';

// Housekeeping of every replica's object store, off the push's critical path. receive-pack's own
// `gc --auto` (receive.autogc) is turned off: it ran a git process inside every push before the
// client heard back, and it only ever ran on the coordinator; a peer installs each push as one more
// pack and would collect them without end. Instead every replica, after it applies pushes or catches
// up, runs `git gc --auto` on that repo once things are quiet: git decides whether there is work
// (gc.auto, gc.autoPackLimit) and takes its own locks, as it does beside a plain git server's pushes.
// Objects of a prepared push are unreferenced until the commit; gc keeps unreferenced objects for
// gc.pruneExpire (two weeks), so it never takes them from under a transaction.
//
// Refs are packed sooner. Every ref a push creates is a loose file, and every git that reads the refs
// (the advertisement of each clone, fetch and push; receive-pack's connectivity check, twice, since
// it lists the repo's refs again as its quarantine's alternate) opens each one: after a mirror push
// of 501 refs a one-commit push took 52 ms against 40 ms with the refs packed (git push file://,
// this machine). gc --auto packs refs only when it finds objects to collect, which a repo pushed to
// a few times never has. So shortly after a write (REF_CHECK_DELAY_MS, not pushed back by further
// writes: a busy repo is the one that needs it) a replica counts the repo's loose refs and, beyond
// looseRefsToPack, runs `git pack-refs --all`, as hosting services' housekeeping does (Gitaly packs
// refs on a logarithmic scale of its packed-refs size, as here). git takes its locks: a ref locked
// by a prepared push is left loose, and an update that needs packed-refs waits for its lock
// (core.packedRefsTimeout).

export interface MaintenanceOptions {
  repoPath: (repoId: string) => string;
  logger: Logger;
  /** Quiet time after the last write to a repo before its gc --auto runs. */
  delayMs: number;
  /** The node's clock (its real timers are unref'd: a pending gc never keeps a stopping process alive); specs pass a manual one. */
  clock?: Clock;
  /** The git to run (default `git` on the PATH); specs pass a stand-in. */
  gitBinary?: string;
}

/** How soon after a write its repo's loose refs are counted (and packed, if there are many). */
export const REF_CHECK_DELAY_MS = 100;

/**
 * How many loose refs a repo may hold before they are packed: 16, or more for a repo whose
 * packed-refs is large (rewriting it costs in proportion), growing with its logarithm: 44 for 40 KiB
 * (the bench fixture's 501 refs), 63 for 600 KiB (10,000 refs), 96 for 60 MiB.
 */
export function looseRefsToPack(packedBytes: number): number {
  if (packedBytes <= 100) return 16;
  return Math.max(16, Math.ceil(Math.log(packedBytes / 100) / Math.log(1.15)));
}

/** What one housekeeping run of a repo does: always the ref check; gc --auto when the repo went quiet. */
interface Work {
  gc: boolean;
}

export class Maintenance {
  private readonly options: MaintenanceOptions;
  private readonly clock: Clock;
  /** A repo's gc, waiting for its quiet time. */
  private readonly pending = new Map<string, unknown>();
  /** A repo's ref check, due REF_CHECK_DELAY_MS after the first write since the last one. */
  private readonly refChecks = new Map<string, unknown>();
  /** The git running for a repo's housekeeping, if one is (undefined while its refs are counted). */
  private readonly running = new Map<string, { child?: ChildProcess }>();
  /** Work that came due while the repo's housekeeping ran: it runs once that run ends. */
  private readonly again = new Map<string, Work>();
  private stopped = false;

  constructor(options: MaintenanceOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  /** A repo was written to: (re)schedule its gc --auto, and check its loose refs soon. */
  touched(repoId: string): void {
    if (this.stopped) return;
    const previous = this.pending.get(repoId);
    if (previous !== undefined) this.clock.clearTimeout(previous);
    const timer = this.clock.setTimeout(() => {
      this.pending.delete(repoId);
      this.run(repoId, { gc: true });
    }, this.options.delayMs);
    this.pending.set(repoId, timer);
    if (!this.refChecks.has(repoId)) {
      this.refChecks.set(
        repoId,
        this.clock.setTimeout(() => {
          this.refChecks.delete(repoId);
          this.run(repoId, { gc: false });
        }, Math.min(REF_CHECK_DELAY_MS, this.options.delayMs)),
      );
    }
  }

  private run(repoId: string, work: Work): void {
    // One housekeeping run per repo at a time. A write during a run gets a run of its own once this
    // one ends: the running gc may have listed the packs before that write's pack arrived, and
    // dropping the run here left those packs for good (no further write, no further gc).
    if (this.stopped) return;
    if (this.running.has(repoId)) {
      this.again.set(repoId, { gc: work.gc || this.again.get(repoId)?.gc === true });
      return;
    }
    const task: { child?: ChildProcess } = {};
    this.running.set(repoId, task);
    void this.housekeep(repoId, work, task).then(() => {
      this.running.delete(repoId);
      // What came due meanwhile runs now (its quiet time, if it is a gc, is over).
      const next = this.again.get(repoId);
      this.again.delete(repoId);
      if (next) this.run(repoId, next);
    });
  }

  private async housekeep(repoId: string, work: Work, task: { child?: ChildProcess }): Promise<void> {
    const repoPath = this.options.repoPath(repoId);
    let pack = false;
    try {
      const limit = looseRefsToPack(await packedRefsBytes(repoPath));
      pack = (await countLooseRefs(repoPath, limit)) >= limit;
    } catch (err) {
      // A repo deleted meanwhile: nothing to pack.
      this.options.logger.debug('loose refs not counted', { repo_id: repoId, err: (err as Error).message });
    }
    if (pack && !this.stopped) await this.git(repoId, task, ['pack-refs', '--all'], 'pack-refs');
    if (work.gc && !this.stopped) await this.git(repoId, task, ['-c', 'gc.autoDetach=false', 'gc', '--auto', '--quiet'], 'gc --auto');
  }

  /** Runs one git in the repo; resolves when it is over, whatever its outcome (a failure is logged). */
  private git(repoId: string, task: { child?: ChildProcess }, args: string[], what: string): Promise<void> {
    const { logger } = this.options;
    return new Promise((resolve) => {
      // Not detached, so that it is ours to wait for and to stop.
      const child = spawn(this.options.gitBinary ?? 'git', args, { cwd: this.options.repoPath(repoId), stdio: ['ignore', 'ignore', 'pipe'] });
      task.child = child;
      let stderr = '';
      child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
      child.on('error', (err) => logger.warn(`${what} did not start`, { repo_id: repoId, err: err.message }));
      child.on('close', (code, signal) => {
        task.child = undefined;
        // A repo deleted meanwhile, or a node stopping, ends a git harmlessly.
        if (code !== 0 && !this.stopped) logger.warn(`${what} failed`, { repo_id: repoId, code, signal, stderr: stderr.trim() });
        else logger.debug(`${what} done`, { repo_id: repoId });
        resolve();
      });
    });
  }

  stop(): void {
    this.stopped = true;
    for (const timer of [...this.pending.values(), ...this.refChecks.values()]) this.clock.clearTimeout(timer);
    this.pending.clear();
    this.refChecks.clear();
    for (const task of this.running.values()) task.child?.kill('SIGTERM');
  }
}
