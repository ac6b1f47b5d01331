import type { Clock } from '../base/clock.js';
import type { CatchUp } from './catch-up.js';
import type { TxnDriver } from './txn-driver.js';

// Anti-entropy, one round of the node's sync loop (after recovery has settled what was in doubt):
// the catalog is compared with the peers' (TxnDriver.syncOnce adopts newer creates, deletes and
// settings), each replica found behind is caught up, and, at most every `verifyIntervalMs`, a few live
// repos have their refs compared with the peers' so a replica that diverged without a version to show
// it is repaired (CatchUp.verify). The protocol never produces such a replica (a disk edit or a bug
// could), so that check is a background scrub on its own slower clock: each repo it reads costs a git
// process here and on every peer, which at every sync round (200 ms in the specs) kept the cores busy.

/** Repos whose refs digest is compared with the peers' in each anti-entropy round. */
export const VERIFY_PER_ROUND = 8;

export interface AntiEntropyOptions {
  driver: Pick<TxnDriver, 'syncOnce' | 'participant'>;
  catchUp: Pick<CatchUp, 'request' | 'verify'>;
  /** Records how many replicas here were found behind (the node's metrics). */
  observeBehind: (count: number) => void;
  clock: Pick<Clock, 'now'>;
  /** The least time between two divergence checks (VERIFY_INTERVAL_MS). */
  verifyIntervalMs: number;
}

export class AntiEntropy {
  private readonly options: AntiEntropyOptions;
  private verifyCursor = 0;
  private lastVerify: number | undefined;

  constructor(options: AntiEntropyOptions) {
    this.options = options;
  }

  async round(): Promise<void> {
    const { driver, catchUp } = this.options;
    const behind = await driver.syncOnce();
    this.options.observeBehind(behind.length);
    for (const repoId of behind) await catchUp.request(repoId);
    // A few repos have their refs compared with the peers' (divergence check), on its own interval.
    const now = this.options.clock.now();
    if (this.lastVerify !== undefined && now - this.lastVerify < this.options.verifyIntervalMs) return;
    this.lastVerify = now;
    const live = driver.participant.liveRepos().filter((r) => !behind.includes(r));
    if (live.length === 0) return;
    const batch: string[] = [];
    for (let i = 0; i < Math.min(VERIFY_PER_ROUND, live.length); i += 1) batch.push(live[(this.verifyCursor + i) % live.length]!);
    this.verifyCursor = (this.verifyCursor + batch.length) % live.length;
    await catchUp.verify(batch);
  }
}
