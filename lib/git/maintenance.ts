import { spawn, type ChildProcess } from 'node:child_process';
import { systemClock, type Clock } from '../base/clock.js';
import type { Logger } from '../base/logger.js';

// Housekeeping of every replica's object store, off the push's critical path. receive-pack's own
// `gc --auto` (receive.autogc) is turned off: it ran a git process inside every push before the
// client heard back, and it only ever ran on the coordinator; a peer installs each push as one more
// pack and would collect them without end. Instead every replica, after it applies pushes or catches
// up, runs `git gc --auto` on that repo once things are quiet: git decides whether there is work
// (gc.auto, gc.autoPackLimit) and takes its own locks, as it does beside a plain git server's pushes.
// Objects of a prepared push are unreferenced until the commit; gc keeps unreferenced objects for
// gc.pruneExpire (two weeks), so it never takes them from under a transaction.

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

export class Maintenance {
  private readonly options: MaintenanceOptions;
  private readonly clock: Clock;
  private readonly pending = new Map<string, unknown>();
  private readonly running = new Map<string, ChildProcess>();
  /** Repos written to while their gc ran: they get another once it ends. */
  private readonly again = new Set<string>();
  private stopped = false;

  constructor(options: MaintenanceOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  /** A repo was written to: (re)schedule its gc --auto. */
  touched(repoId: string): void {
    if (this.stopped) return;
    const previous = this.pending.get(repoId);
    if (previous !== undefined) this.clock.clearTimeout(previous);
    const timer = this.clock.setTimeout(() => {
      this.pending.delete(repoId);
      this.run(repoId);
    }, this.options.delayMs);
    this.pending.set(repoId, timer);
  }

  private run(repoId: string): void {
    // One gc per repo at a time. A write during a run gets a run of its own once this one ends: the
    // running gc may have listed the packs before that write's pack arrived, and dropping the run
    // here left those packs for good (no further write, no further gc).
    if (this.stopped) return;
    if (this.running.has(repoId)) {
      this.again.add(repoId);
      return;
    }
    const { logger } = this.options;
    // Not detached, so that it is ours to wait for and to stop.
    const child = spawn(this.options.gitBinary ?? 'git', ['-c', 'gc.autoDetach=false', 'gc', '--auto', '--quiet'], {
      cwd: this.options.repoPath(repoId),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.running.set(repoId, child);
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
    child.on('error', (err) => logger.warn('gc --auto did not start', { repo_id: repoId, err: err.message }));
    child.on('close', (code, signal) => {
      this.running.delete(repoId);
      if (this.again.delete(repoId)) this.touched(repoId);
      // A repo deleted meanwhile, or a node stopping, ends a gc harmlessly.
      if (code !== 0 && !this.stopped) logger.warn('gc --auto failed', { repo_id: repoId, code, signal, stderr: stderr.trim() });
      else logger.debug('gc --auto done', { repo_id: repoId });
    });
  }

  stop(): void {
    this.stopped = true;
    for (const timer of this.pending.values()) this.clock.clearTimeout(timer);
    this.pending.clear();
    for (const child of this.running.values()) child.kill('SIGTERM');
  }
}
