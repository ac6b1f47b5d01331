import { expect } from 'chai';
import { CoordinatorTxn, Participant, ZERO_OID, type TxnOp } from '../../lib/core/txn-core.js';

// Issue 7's protocol defects, each pinned at the core where it was decided wrong. The simulation
// (driver-sim.spec) finds them again from random faults; these name the exact step.

const A = 'http://a';
const B = 'http://b';
const C = 'http://c';
const oid = (n: number): string => n.toString(16).padStart(40, '0');
const push = (generation: number, n: number): TxnOp => ({
  kind: 'push',
  repoId: 'o/r',
  updates: [{ ref: 'refs/heads/main', old: n === 1 ? ZERO_OID : oid(n - 1), new: oid(n) }],
  base: { epoch: 1, generation },
});

/** A participant with o/r live at generation `generation` and `txnId` prepared on it. */
function preparedAt(generation: number, txnId: string, op: TxnOp): Participant {
  const p = new Participant();
  p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1, generation });
  p.onPrepare({ type: 'prepare', txnId, op, coordinator: A }, { 'refs/heads/main': op.kind === 'push' ? op.updates[0]!.old : ZERO_OID });
  p.onPrepared(txnId);
  return p;
}

describe('issue 7 protocol defects, at the core', () => {
  describe('defect 1: a commit at a version that does not follow the replica', () => {
    it('the coordinator answers a recovering participant with the decided generation, from memory and after a restart', () => {
      const p = new Participant();
      p.recordDecision('t1', 'commit', 1, 8, push(7, 1));
      expect(p.onCoordinatorQuery('t1', false)).to.deep.include({ outcome: 'accepted', epoch: 1, generation: 8 });
      const restarted = new Participant();
      restarted.replay({ t: 'decision', txnId: 't1', outcome: 'commit', op: push(7, 1), epoch: 1, generation: 8 });
      expect(restarted.onCoordinatorQuery('t1', false)).to.deep.include({ outcome: 'accepted', epoch: 1, generation: 8 });
    });

    it('a replica refuses a commit whose version is not its base + 1, and stays prepared', () => {
      const p = preparedAt(7, 't1', push(7, 1));
      // What the old coordinator sent a participant that resolved through it: generation 0.
      expect(p.onCommit('t1', 1, 0, true)).to.deep.equal([{ type: 'reply', vote: { vote: 'no', code: 'stale', detail: "commit at 1.0 does not follow the push's base 1.7" } }]);
      expect(p.status('t1')).to.equal('prepared');
      expect(p.onCommit('t1', 1, 8, true).map((e) => e.type)).to.deep.equal(['persist', 'apply', 'reply']);
    });

    it("the coordinator counts an acknowledgement only at the version it decided", () => {
      const coord = new CoordinatorTxn({ txnId: 't1', op: push(7, 1), self: A, nodes: [A, B, C], quorum: 2, prepareTimeoutMs: 10, commitTimeoutMs: 10, commitResends: 0 });
      coord.start();
      coord.onVote(A, { vote: 'yes', epoch: 1, generation: 7 });
      coord.onVote(B, { vote: 'yes', epoch: 1, generation: 7 });
      // B says it applied generation 0: not this transaction's version, no "ok".
      expect(coord.onCommitReply(B, { vote: 'yes', epoch: 1, generation: 0 }, true).filter((e) => e.type === 'reply')).to.deep.equal([]);
      const replies = coord.onCommitReply(B, { vote: 'yes', epoch: 1, generation: 8 }, true).filter((e) => e.type === 'reply');
      expect(replies).to.have.length(1);
      expect(replies[0]).to.deep.include({ result: { outcome: 'committed', epoch: 1, generation: 8, confirmed: [A, B], applying: [], unanswered: [C], behind: [], final: true } });
    });
  });

  describe('defect 6: a prepare that arrives after its abort', () => {
    it('is refused and locks nothing', () => {
      const p = new Participant();
      p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1, generation: 0 });
      expect(p.onAbort('late')).to.deep.equal([{ type: 'persist', entry: { t: 'aborted', txnId: 'late' } }]);
      expect(p.onPrepare({ type: 'prepare', txnId: 'late', op: push(0, 1), coordinator: A }, {})).to.deep.equal([
        { type: 'reply', vote: { vote: 'no', code: 'refused' } },
      ]);
      expect(p.lockedBy('o/r')).to.equal(undefined);
    });
  });

  describe('defect 7: decided transactions applied again at restart', () => {
    it('a final commit logged without `applied` is applied again; one followed by a later prepare of its repo never is', () => {
      const p = new Participant();
      p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1, generation: 0 });
      p.replay({ t: 'prepared', txnId: 't1', op: push(0, 1), coordinator: A });
      p.replay({ t: 'committed', txnId: 't1', epoch: 1, generation: 1 });
      expect(p.unapplied().map((t) => t.txnId)).to.deep.equal(['t1']);
      // The push after it prepared here, so t1 was applied (its lock was released only then).
      p.replay({ t: 'prepared', txnId: 't2', op: push(1, 2), coordinator: A });
      p.replay({ t: 'committed', txnId: 't2', epoch: 1, generation: 2 });
      p.replay({ t: 'applied', txnId: 't2' });
      expect(p.unapplied()).to.deep.equal([]);
      expect(p.versionOf('o/r')).to.deep.equal({ epoch: 1, generation: 2 });
    });
  });

  describe('defect 8: a stale read right after "ok"', () => {
    it('a replica applying a final commit reports the new version to read checks', () => {
      const p = preparedAt(3, 't1', push(3, 1));
      expect(p.readVersion('o/r')).to.deep.equal({ epoch: 1, generation: 3 });
      p.onCommit('t1', 1, 4, true);
      expect(p.versionOf('o/r')).to.deep.equal({ epoch: 1, generation: 3 });
      expect(p.readVersion('o/r')).to.deep.equal({ epoch: 1, generation: 4 });
      expect(p.applying('o/r')).to.equal('t1');
      p.onCommitted('t1');
      expect(p.versionOf('o/r')).to.deep.equal({ epoch: 1, generation: 4 });
      expect(p.applying('o/r')).to.equal(undefined);
    });

    it('a commit only accepted (not final, W > 2) is not reported, and nothing is applied', () => {
      const p = preparedAt(3, 't1', push(3, 1));
      expect(p.onCommit('t1', 1, 4, false).map((e) => e.type)).to.deep.equal(['persist', 'reply']);
      expect(p.status('t1')).to.equal('accepted');
      expect(p.readVersion('o/r')).to.deep.equal({ epoch: 1, generation: 3 });
    });
  });
});
