import { expect } from 'chai';
import { Participant, ZERO_OID, type RecoveryStep, type TxnOp } from '../../lib/core/txn-core.js';

// The decisions that used to live in the driver, now in the core where they are pure: the prepare
// plan, the steps of a prepare an abort can overtake, the in-doubt grace period, and recovery's
// conversation (whom to ask, in what order, and what the answers prove).

const A = 'http://a';
const B = 'http://b';
const C = 'http://c';
const cluster = { self: B, nodes: [A, B, C], quorum: 2 };
const oid = (n: number): string => n.toString(16).padStart(40, '0');
const push = (updates: { ref: string; old: string; new: string }[], generation = 0): TxnOp => ({ kind: 'push', repoId: 'o/r', updates, base: { epoch: 1, generation } });
const main = (old: string, now: string): { ref: string; old: string; new: string } => ({ ref: 'refs/heads/main', old, new: now });

function live(): Participant {
  const p = new Participant();
  p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1, generation: 0 });
  return p;
}

/** B holding `txnId` prepared, from coordinator A. */
function prepared(txnId = 't1', op: TxnOp = push([main(ZERO_OID, oid(1))])): Participant {
  const p = live();
  p.onPrepare({ type: 'prepare', txnId, op, coordinator: A }, {});
  p.onStaged(txnId);
  p.onPrepared(txnId, 1000);
  return p;
}

/** Runs a recovery conversation against scripted answers; returns whom it asked and its conclusion. */
function converse(p: Participant, answers: Record<string, Parameters<ReturnType<Participant['recovery']>['onAnswer']>[0]>, txnId = 't1'): { asked: string[]; step: RecoveryStep } {
  const txn = p.inDoubt().find((t) => t.txnId === txnId)!;
  const recovery = p.recovery(txn, cluster);
  const asked: string[] = [];
  for (let step = recovery.next(); ; step = recovery.next()) {
    if (step.type !== 'ask') return { asked, step };
    asked.push(`${step.node}${step.asCoordinator ? ' as coordinator' : ''}${step.refuse ? ' refuse' : ''}`);
    recovery.onAnswer(answers[step.node] ?? 'unreachable');
  }
}

describe('protocol decisions in the core', () => {
  describe('a prepare, step by step', () => {
    it('plans to wait for the commit still being applied to the repo, and reads only the refs it needs', () => {
      const p = prepared();
      p.onCommit('t1', 1, 1, true);
      const next = { type: 'prepare' as const, txnId: 't2', op: push([main(oid(1), oid(2))], 1), coordinator: A };
      expect(p.planPrepare(next)).to.deep.equal({ waitForApply: 't1', readRefs: ['refs/heads/main'] });
      p.onCommitted('t1');
      expect(p.planPrepare(next)).to.deep.equal({ readRefs: ['refs/heads/main'] });
      // A push that creates a ref is checked against every ref (name/directory clashes).
      expect(p.planPrepare({ ...next, op: push([{ ref: 'refs/heads/x', old: ZERO_OID, new: oid(3) }], 1) })).to.deep.equal({ readRefs: 'all' });
      expect(p.planPrepare({ ...next, op: { kind: 'create', repoId: 'o/new' } })).to.deep.equal({ readRefs: 'none' });
    });

    it('stages, then logs, then votes yes; an abort that overtakes the staging undoes it and votes no', () => {
      const p = live();
      const op = push([main(ZERO_OID, oid(1))]);
      expect(p.onPrepare({ type: 'prepare', txnId: 't1', op, coordinator: A }, {})).to.deep.equal([{ type: 'stage', txnId: 't1', op, coordinator: A }]);
      expect(p.onStaged('t1')).to.deep.equal([{ type: 'persist', entry: { t: 'prepared', txnId: 't1', op, coordinator: A } }]);
      expect(p.onPrepared('t1', 5)).to.deep.equal([{ type: 'reply', vote: { vote: 'yes', epoch: 1, generation: 0 } }]);

      const q = live();
      q.onPrepare({ type: 'prepare', txnId: 't1', op, coordinator: A }, {});
      q.onAbort('t1');
      expect(q.onStaged('t1')).to.deep.equal([{ type: 'discard', txnId: 't1', op }, { type: 'reply', vote: { vote: 'no', code: 'refused' } }]);
      expect(q.lockedBy('o/r')).to.equal(undefined);

      // Overtaken while `prepared` was being logged: undone, and the vote is no.
      const r = live();
      r.onPrepare({ type: 'prepare', txnId: 't1', op, coordinator: A }, {});
      r.onStaged('t1');
      r.onAbort('t1');
      expect(r.onPrepared('t1', 5)).to.deep.equal([{ type: 'discard', txnId: 't1', op }, { type: 'reply', vote: { vote: 'no', code: 'refused' } }]);
    });

    it('drops the pack shipped ahead of a prepare it votes no on, but never one it holds', () => {
      const p = live();
      const op = push([main(oid(7), oid(8))]);
      expect(p.onPrepare({ type: 'prepare', txnId: 't1', op, coordinator: A }, { 'refs/heads/main': oid(6) })).to.deep.equal([
        { type: 'discard', txnId: 't1', op },
        { type: 'reply', vote: { vote: 'no', code: 'ref_conflict', detail: 'refs/heads/main' } },
      ]);
      const q = prepared();
      // A duplicate of a prepare this node holds is answered yes and nothing is dropped.
      expect(q.onPrepare({ type: 'prepare', txnId: 't1', op: push([main(ZERO_OID, oid(1))]), coordinator: A }, {}).map((e) => e.type)).to.deep.equal(['reply']);
    });
  });

  it('asks about a transaction in doubt only once the grace period has passed, or at once after a restart', () => {
    const p = prepared();
    expect(p.inDoubtDue(1500, 1000)).to.deep.equal([]);
    expect(p.inDoubtDue(2000, 1000).map((t) => t.txnId)).to.deep.equal(['t1']);
    const replayed = live();
    replayed.replay({ t: 'prepared', txnId: 't1', op: push([main(ZERO_OID, oid(1))]), coordinator: A });
    expect(replayed.inDoubtDue(0, 1000).map((t) => t.txnId)).to.deep.equal(['t1']);
  });

  describe('recovery of a transaction in doubt', () => {
    it('asks the coordinator first and waits while it still runs the transaction', () => {
      const { asked, step } = converse(prepared(), { [A]: { outcome: 'pending' } });
      expect(asked).to.deep.equal([`${A} as coordinator`]);
      expect(step).to.deep.equal({ type: 'wait' });
    });

    it("takes the coordinator's outcome, at the version it gives", () => {
      expect(converse(prepared(), { [A]: { outcome: 'committed', epoch: 1, generation: 1 } })).to.deep.equal({ asked: [`${A} as coordinator`], step: { type: 'commit', version: { epoch: 1, generation: 1 } } });
      expect(converse(prepared(), { [A]: { outcome: 'aborted' } }).step).to.deep.equal({ type: 'abort' });
    });

    it('without the coordinator asks every other node to refuse, and two refusals of three prove abort', () => {
      const { asked, step } = converse(prepared(), { [C]: { outcome: 'refused' } });
      expect(asked).to.deep.equal([`${A} as coordinator`, `${C} refuse`]);
      expect(step).to.deep.equal({ type: 'abort' });
    });

    it('commits a push at the version its operation gives once W accepted it', () => {
      const { step } = converse(prepared(), { [C]: { outcome: 'accepted' } });
      expect(step).to.deep.equal({ type: 'commit', version: { epoch: 1, generation: 1 } });
    });

    it('waits when nothing is proven (coordinator and the other node unreachable), and commits once it accepted', () => {
      expect(converse(prepared(), {}).step).to.deep.equal({ type: 'wait' });
      // Its own acceptance and the coordinator's log (that sent it) make W = 2.
      const p = prepared();
      p.onCommit('t1', 1, 1, false, [A, B, C]);
      expect(converse(p, {}).step).to.deep.equal({ type: 'commit', version: { epoch: 1, generation: 1 } });
    });

    it('concludes nothing when its own record moved while it asked', () => {
      const p = prepared();
      const recovery = p.recovery(p.inDoubt()[0]!, cluster);
      recovery.next();
      p.onAbort('t1');
      recovery.onAnswer('unreachable');
      expect(recovery.next()).to.deep.equal({ type: 'wait' });
    });

    it('settles a commit decision of its own by asking every peer, its log counting as an acceptance', () => {
      const p = new Participant();
      const op = push([main(ZERO_OID, oid(1))]);
      p.recordDecision('t1', 'commit', 1, 1, op, [B, C]);
      const recovery = p.recovery({ txnId: 't1', op, coordinator: B, ownDecision: true }, cluster);
      const first = recovery.next();
      expect(first).to.deep.equal({ type: 'ask', node: A, asCoordinator: false, refuse: true });
      recovery.onAnswer({ outcome: 'refused' });
      expect(recovery.next()).to.deep.equal({ type: 'ask', node: C, asCoordinator: false, refuse: true });
      recovery.onAnswer({ outcome: 'accepted', epoch: 1, generation: 1 });
      expect(recovery.next()).to.deep.equal({ type: 'commit', version: { epoch: 1, generation: 1 } });
    });
  });
});
