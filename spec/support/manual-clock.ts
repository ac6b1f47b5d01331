import type { Clock } from '../../lib/base/clock.js';

/**
 * A Clock for unit specs: time stands still until the spec moves it. `advance` runs every timer that
 * comes due, in order of due time (then of setting), timers set meanwhile included.
 */
export class ManualClock implements Clock {
  private nowMs: number;
  private nextId = 0;
  private readonly timers = new Map<number, { atMs: number; fn: () => void }>();

  constructor(startMs = 0) {
    this.nowMs = startMs;
  }

  now(): number {
    return this.nowMs;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    this.nextId += 1;
    this.timers.set(this.nextId, { atMs: this.nowMs + Math.max(0, ms), fn });
    return this.nextId;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Timers set and neither run nor cleared. */
  get pending(): number {
    return this.timers.size;
  }

  advance(ms: number): void {
    const targetMs = this.nowMs + ms;
    for (;;) {
      let next: [number, { atMs: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].atMs <= targetMs && (next === undefined || entry[1].atMs < next[1].atMs)) next = entry;
      if (next === undefined) break;
      this.timers.delete(next[0]);
      this.nowMs = next[1].atMs;
      next[1].fn();
    }
    this.nowMs = targetMs;
  }
}
