import { expect } from 'chai';
import { Participant, ZERO_OID, type LogEntry, type TxnOp } from '../../lib/core/txn-core.js';

// Defect 11: the log and the in-memory transaction and decision maps were never compacted. A
// checkpoint keeps what recovery needs and a bounded tail of settled transactions.

const A = 'http://a';
const oid = (n: number): string => n.toString(16).padStart(40, '0');

/** Runs the participant's side of one committed push and returns the log entries it wrote. */
function committedPush(p: Participant, txnId: string, repoId: string, n: number): LogEntry[] {
  const base = p.versionOf(repoId);
  const op: TxnOp = { kind: 'push', repoId, updates: [{ ref: 'refs/heads/main', old: n === 1 ? ZERO_OID : oid(n - 1), new: oid(n) }], base };
  const log: LogEntry[] = [];
  const keep = (effects: { type: string; entry?: LogEntry }[]): void => {
    for (const e of effects) if (e.type === 'persist' && e.entry) log.push(e.entry);
  };
  keep(p.onPrepare({ type: 'prepare', txnId, op, coordinator: A }, { 'refs/heads/main': n === 1 ? ZERO_OID : oid(n - 1) }));
  keep(p.onStaged(txnId));
  p.onPrepared(txnId);
  keep(p.onCommit(txnId, base.epoch, base.generation + 1, true));
  keep(p.onCommitted(txnId));
  return log;
}

function rebuilt(entries: readonly LogEntry[]): Participant {
  const p = new Participant();
  for (const e of entries) p.replay(e);
  return p;
}

describe('Participant.checkpoint', () => {
  it('rebuilds the same catalog, locks, in-doubt and unapplied transactions when replayed', () => {
    const p = new Participant();
    p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1 });
    p.replay({ t: 'synced', repoId: 'o/gone', state: 'deleted', epoch: 2 });
    for (let n = 1; n <= 5; n += 1) committedPush(p, `t${n}`, 'o/r', n);
    // One prepared (in doubt), one accepted, one final but not applied, on three other repos.
    p.replay({ t: 'synced', repoId: 'o/a', state: 'live', epoch: 1 });
    p.replay({ t: 'synced', repoId: 'o/b', state: 'live', epoch: 1 });
    p.replay({ t: 'synced', repoId: 'o/c', state: 'live', epoch: 1 });
    const push = (repoId: string): TxnOp => ({ kind: 'push', repoId, updates: [{ ref: 'refs/heads/x', old: ZERO_OID, new: oid(9) }], base: { epoch: 1, generation: 0 } });
    p.replay({ t: 'prepared', txnId: 'doubt', op: push('o/a'), coordinator: A });
    p.replay({ t: 'prepared', txnId: 'acc', op: push('o/b'), coordinator: A });
    p.replay({ t: 'accepted', txnId: 'acc', epoch: 1, generation: 1 });
    p.replay({ t: 'prepared', txnId: 'final', op: push('o/c'), coordinator: A });
    p.replay({ t: 'committed', txnId: 'final', epoch: 1, generation: 1 });
    p.replay({ t: 'decision', txnId: 'mine', outcome: 'commit', op: { kind: 'create', repoId: 'o/new' }, epoch: 1, generation: 0 });

    const q = rebuilt(p.checkpoint(2));
    expect(q.catalog()).to.deep.equal(p.catalog());
    expect(q.inDoubt()).to.deep.equal(p.inDoubt());
    expect(q.unapplied()).to.deep.equal(p.unapplied());
    for (const repo of ['o/a', 'o/b', 'o/c', 'o/r']) expect(q.lockedBy(repo)).to.equal(p.lockedBy(repo));
    // An unsettled decision of ours is kept whatever its age.
    expect(q.unsettledDecisions().map((d) => d.txnId)).to.deep.equal(['mine']);
    // The two most recent settled pushes still answer; older ones are gone from memory and log.
    expect(q.onQuery('t5', false).outcome).to.equal('committed');
    expect(q.onQuery('t4', false).outcome).to.equal('committed');
    expect(p.status('t1')).to.equal(undefined);
    expect(q.status('t1')).to.equal(undefined);
    // A duplicate commit of a retained push is still acknowledged at its version, never applied again.
    expect(q.onCommit('t5', 1, 5, true)).to.deep.equal([{ type: 'reply', vote: { vote: 'yes', epoch: 1, generation: 5 } }]);
  });

  it('keeps the log and the maps flat over a long run (10,000 pushes, a checkpoint every 1,000 entries)', () => {
    const p = new Participant();
    p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1 });
    let log: LogEntry[] = [];
    const sizes: number[] = [];
    for (let n = 1; n <= 10_000; n += 1) {
      log.push(...committedPush(p, `t${n}`, 'o/r', n));
      if (log.length >= 1000) {
        log = p.checkpoint(100);
        sizes.push(log.length);
      }
    }
    // Bounded by the catalog plus the retained tail, not by the number of pushes.
    expect(Math.max(...sizes)).to.be.at.most(1 + 100);
    expect(sizes.length).to.be.greaterThan(20);
    const q = rebuilt(log);
    expect(q.versionOf('o/r')).to.deep.equal({ epoch: 1, generation: 10_000 });
    expect(q.status('t10000')).to.equal('committed');
  });
});
