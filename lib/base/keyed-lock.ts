import { systemClock, type Clock } from './clock.js';

// One holder per key at a time, in arrival order, with a bounded wait. Pushes to one repo hold it from
// the pre-receive hook until their own replica has applied the refs.

export class LockTimeoutError extends Error {
  constructor(key: string, timeoutMs: number) {
    super(`waited ${timeoutMs} ms for ${key}`);
    this.name = 'LockTimeoutError';
  }
}

export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  constructor(private readonly clock: Clock = systemClock) {}

  /** Resolves with a release function once the key is ours; rejects after `timeoutMs`. */
  async acquire(key: string, timeoutMs: number): Promise<() => void> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    let timer: unknown;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = this.clock.setTimeout(() => resolve('timeout'), timeoutMs)));
    const outcome = await Promise.race([previous.then(() => 'ours' as const), timedOut]);
    this.clock.clearTimeout(timer);
    if (outcome === 'timeout') {
      // Give our turn away as soon as it comes, so later waiters are not blocked by us.
      void previous.then(release);
      throw new LockTimeoutError(key, timeoutMs);
    }
    let released = false;
    return () => {
      if (!released) {
        released = true;
        release();
      }
    };
  }
}
