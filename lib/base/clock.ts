// The node's one clock. Every timer and every reading of the time in the node goes through a Clock
// handed down from the server, so the seeded simulation and unit specs drive time themselves
// (a manual clock) and a fault that depends on timing replays exactly. spec/unit/clock-use.spec.ts
// fails on any timer or clock reading elsewhere in lib/.

export interface TimerOptions {
  /**
   * Hold the process open while the timer is pending (real timers are unref'd otherwise). For waits
   * that can run before the node listens, at start-up, when nothing else would: without it the
   * process would end in the middle of the wait.
   */
  keepAlive?: boolean;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number, options?: TimerOptions): unknown;
  clearTimeout(handle: unknown): void;
}

/** Wall-clock time and real timers. Timers are unref'd: a pending one never keeps a stopping process alive. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms, options) => {
    const timer = setTimeout(fn, ms);
    if (!options?.keepAlive) timer.unref();
    return timer;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** Resolves after `ms` on `clock`. */
export function sleep(clock: Clock, ms: number, options?: TimerOptions): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms, options));
}
