import { expect } from 'chai';
import { CoordinatorTxn, deathDeclarationProblem, movedPast, Participant, resolveInDoubt, ZERO_OID, type RecoveryStep, type RepoFacts, type TxnOp } from '../../lib/core/txn-core.js';

// A node declared dead for good by the operator (`quorum-git node declare-dead`): its records are
// void, recovery stops asking it, and once every other node answered the live nodes' records decide.
// It ends the two-fault wait the protocol otherwise has (README, Limitations): a transaction whose
// outcome rested on the answer of an acceptor that died for good.

const oid = (n: number): string => n.toString(16).padStart(40, '0');
const op: TxnOp = { kind: 'push', repoId: 'o/r', updates: [{ ref: 'refs/heads/main', old: ZERO_OID, new: oid(1) }], base: { epoch: 1, generation: 0 } };

function live(): Participant {
  const p = new Participant();
  p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1, generation: 0 });
  return p;
}

/** Runs a recovery against scripted answers; returns whom it asked and its conclusion. */
function converse(
  p: Participant,
  txn: { txnId: string; op: TxnOp; coordinator: string; ownDecision?: boolean },
  cluster: { self: string; nodes: string[]; quorum: number },
  answers: Record<string, { outcome: 'committed' | 'accepted' | 'aborted' | 'prepared' | 'refused' | 'pending'; epoch?: number; generation?: number; repo?: RepoFacts }>,
): { asked: string[]; step: RecoveryStep } {
  const recovery = p.recovery(txn, cluster);
  const asked: string[] = [];
  for (let step = recovery.next(); ; step = recovery.next()) {
    if (step.type !== 'ask') return { asked, step };
    asked.push(step.node);
    recovery.onAnswer(answers[step.node] ?? 'unreachable');
  }
}

describe('nodes declared dead for good', () => {
  describe('on 3 nodes: C down when B decided, so the acceptors were B and A; B crashed, A died for good', () => {
    const cluster = { self: 'B', nodes: ['A', 'B', 'C'], quorum: 2 };
    const decided = (): Participant => {
      const p = live();
      p.recordDecision('t1', 'commit', 1, 1, op, ['B', 'A']);
      return p;
    };

    it('waits for good while A is only unreachable: A may hold the acceptance that made the commit final, or not', () => {
      const { asked, step } = converse(decided(), { txnId: 't1', op, coordinator: 'B', ownDecision: true }, cluster, { C: { outcome: 'refused' } });
      expect(asked).to.deep.equal(['A', 'C']);
      expect(step).to.deep.equal({ type: 'wait' });
    });

    it('once A is declared dead, asks only C and commits: its own logged decision is a live acceptance', () => {
      const p = decided();
      p.onMembership('A', true);
      const { asked, step } = converse(p, { txnId: 't1', op, coordinator: 'B', ownDecision: true }, cluster, { C: { outcome: 'refused' } });
      expect(asked).to.deep.equal(['C']);
      expect(step).to.deep.equal({ type: 'commit', version: { epoch: 1, generation: 1 } });
    });

    // Found by the simulation (seeds 21234 and 38055 of 3 nodes): A, prepared, had proven an abort with
    // C's refusal (N - W + 1 = 2 refusals), released the repo and pushed to it with C at 1.1; then A died
    // and was declared. B's logged decision is a live acceptance, but the commit was never final.
    it('once A is declared dead, aborts when C holds the repo past the push\'s base: the repo moved on without it', () => {
      const p = decided();
      p.onMembership('A', true);
      const past: RepoFacts = { epoch: 1, generation: 1, settingsVersion: 0, held: false };
      expect(converse(p, { txnId: 't1', op, coordinator: 'B', ownDecision: true }, cluster, { C: { outcome: 'refused', repo: past } }).step).to.deep.equal({ type: 'abort' });
    });

    it('once A is declared dead, aborts when C holds another transaction on the repo with an acceptance', () => {
      const p = decided();
      p.onMembership('A', true);
      const held: RepoFacts = { epoch: 1, generation: 0, settingsVersion: 0, held: true };
      expect(converse(p, { txnId: 't1', op, coordinator: 'B', ownDecision: true }, cluster, { C: { outcome: 'refused', repo: held } }).step).to.deep.equal({ type: 'abort' });
    });

    it('once A is declared dead, still commits when C holds the repo at the push\'s base', () => {
      const p = decided();
      p.onMembership('A', true);
      const atBase: RepoFacts = { epoch: 1, generation: 0, settingsVersion: 0, held: false };
      expect(converse(p, { txnId: 't1', op, coordinator: 'B', ownDecision: true }, cluster, { C: { outcome: 'refused', repo: atBase } }).step).to.deep.equal({
        type: 'commit',
        version: { epoch: 1, generation: 1 },
      });
    });

    it('still waits while C, the other live node, cannot be reached', () => {
      const p = decided();
      p.onMembership('A', true);
      expect(converse(p, { txnId: 't1', op, coordinator: 'B', ownDecision: true }, cluster, {}).step).to.deep.equal({ type: 'wait' });
    });
  });

  describe('on 5 nodes, the coordinator N1 and the acceptor N2 declared dead', () => {
    const cluster = { self: 'N3', nodes: ['N1', 'N2', 'N3', 'N4', 'N5'], quorum: 3 };
    const inDoubt = (accept: boolean): Participant => {
      const p = live();
      p.onPrepare({ type: 'prepare', txnId: 't1', op, coordinator: 'N1' }, {});
      p.onStaged('t1');
      p.onPrepared('t1', 0);
      if (accept) p.onCommit('t1', 1, 1, false, ['N1', 'N2', 'N3']);
      p.onMembership('N1', true);
      p.onMembership('N2', true);
      return p;
    };
    const txn = { txnId: 't1', op, coordinator: 'N1' };

    it('never asks the dead coordinator, and aborts when no live node holds an acceptance', () => {
      const { asked, step } = converse(inDoubt(false), txn, cluster, { N4: { outcome: 'refused' }, N5: { outcome: 'refused' } });
      expect(asked).to.deep.equal(['N4', 'N5']);
      expect(step).to.deep.equal({ type: 'abort' });
    });

    it('commits when it accepted the commit itself, which normal rules could not prove (2 acceptances of W = 3)', () => {
      expect(converse(inDoubt(true), txn, cluster, { N4: { outcome: 'refused' }, N5: { outcome: 'refused' } }).step).to.deep.equal({
        type: 'commit',
        version: { epoch: 1, generation: 1 },
      });
    });

    it('commits when another live acceptor holds an acceptance, at the version it gives', () => {
      const p = inDoubt(false);
      const answers = { N4: { outcome: 'accepted' as const, epoch: 1, generation: 1 }, N5: { outcome: 'refused' as const } };
      // N4 is an acceptor in this decision (the answer names them).
      const recovery = p.recovery(txn, cluster);
      const asked: string[] = [];
      let step = recovery.next();
      for (; step.type === 'ask'; step = recovery.next()) {
        asked.push(step.node);
        const a = answers[step.node as 'N4' | 'N5'];
        recovery.onAnswer(a.outcome === 'accepted' ? { ...a, acceptors: ['N1', 'N2', 'N4'] } : a);
      }
      expect(asked).to.deep.equal(['N4', 'N5']);
      expect(step).to.deep.equal({ type: 'commit', version: { epoch: 1, generation: 1 } });
    });
  });

  describe('the rule itself (resolveInDoubt)', () => {
    const ids = { coordinator: 'N1', peers: ['N2', 'N4', 'N5'], self: 'N3' };
    it('decides only once every live node answered', () => {
      expect(resolveInDoubt({ coordinator: 'unreachable', peers: ['unreachable', 'refused', 'unreachable'], self: 'prepared', ids, dead: ['N1', 'N2'] }, 5, 3)).to.equal('wait');
      expect(resolveInDoubt({ coordinator: 'unreachable', peers: ['unreachable', 'refused', 'refused'], self: 'prepared', ids, dead: ['N1', 'N2'] }, 5, 3)).to.equal('abort');
    });

    it('is not applied with more than N - W nodes declared dead (an acknowledged push might live only on them)', () => {
      const three = { coordinator: 'N1', peers: ['N2', 'N4', 'N5'], self: 'N3' };
      expect(resolveInDoubt({ coordinator: 'unreachable', peers: ['unreachable', 'unreachable', 'refused'], self: 'prepared', ids: three, dead: ['N1', 'N2', 'N4'] }, 5, 3)).to.equal('wait');
    });

    it('aborts instead of committing on a live acceptance when the repo moved on', () => {
      const declared = { coordinator: 'accepted' as const, peers: ['refused' as const, 'refused' as const, 'refused' as const], self: 'counted' as const, ids: { coordinator: 'N3', peers: ['N1', 'N4', 'N5'], self: 'N3' }, dead: ['N2'] };
      expect(resolveInDoubt({ ...declared, peers: ['refused', 'unreachable', 'refused'] }, 5, 3)).to.equal('wait');
      expect(resolveInDoubt({ ...declared, peers: ['refused', 'accepted', 'refused'] }, 5, 3)).to.equal('commit');
      expect(resolveInDoubt({ ...declared, peers: ['refused', 'accepted', 'refused'], movedOn: true }, 5, 3)).to.equal('abort');
    });

    it('tells a repo moved past a push, a settings change, a create or a delete', () => {
      const at = (epoch: number, generation: number, settingsVersion = 0, held = false): RepoFacts => ({ epoch, generation, settingsVersion, held });
      expect(movedPast(op, at(1, 0), undefined)).to.equal(false);
      expect(movedPast(op, at(0, 0), undefined)).to.equal(false);
      expect(movedPast(op, at(1, 1), undefined)).to.equal(true);
      expect(movedPast(op, at(2, 0), undefined)).to.equal(true);
      expect(movedPast(op, at(1, 0, 0, true), undefined)).to.equal(true);
      const settings: TxnOp = { kind: 'settings', repoId: 'o/r', settings: { visibility: 'private', collaborators: {}, protectedBranches: [] }, base: { epoch: 1, settingsVersion: 2 } };
      expect(movedPast(settings, at(1, 9, 2), undefined)).to.equal(false);
      expect(movedPast(settings, at(1, 0, 3), undefined)).to.equal(true);
      expect(movedPast(settings, at(2, 0, 0), undefined)).to.equal(true);
      const del: TxnOp = { kind: 'delete', repoId: 'o/r' };
      expect(movedPast(del, at(2, 5), { epoch: 3, generation: 0 })).to.equal(false);
      expect(movedPast(del, at(3, 0), { epoch: 3, generation: 0 })).to.equal(true);
      expect(movedPast(del, at(9, 0), undefined)).to.equal(false);
    });

    it('is told, by the node answering, what it holds of the repo beside the transaction asked about', () => {
      const p = live();
      p.replay({ t: 'prepared', txnId: 't1', op, coordinator: 'A' });
      // Its own prepared record of the transaction asked about holds nothing "else".
      expect(p.repoFacts('o/r', 't1')).to.deep.equal({ epoch: 1, generation: 0, settingsVersion: 0, held: false });
      // Prepared only, another transaction cannot be final; accepted, it may be.
      expect(p.repoFacts('o/r', 't0').held).to.equal(false);
      p.replay({ t: 'accepted', txnId: 't1', epoch: 1, generation: 1 });
      expect(p.repoFacts('o/r', 't0').held).to.equal(true);
      expect(p.repoFacts('o/other', 't0')).to.deep.equal({ epoch: 0, generation: 0, settingsVersion: 0, held: false });
    });

    it('counts acceptances only from the acceptors the decision named', () => {
      // N4 accepted though it is not an acceptor: it cannot make the commit final, so it proves nothing.
      expect(resolveInDoubt({ coordinator: 'accepted', peers: ['refused', 'accepted', 'refused'], self: 'accepted', acceptors: ['N1', 'N2', 'N3'], ids }, 5, 3)).to.equal('abort');
      expect(resolveInDoubt({ coordinator: 'accepted', peers: ['accepted', 'refused', 'refused'], self: 'accepted', acceptors: ['N1', 'N2', 'N3'], ids }, 5, 3)).to.equal('commit');
    });
  });

  it('may declare at most N - W nodes, never the node asked, never an unknown one', () => {
    const cluster = { self: 'N1', nodes: ['N1', 'N2', 'N3', 'N4', 'N5'], quorum: 3 };
    expect(deathDeclarationProblem('N2', cluster, [])).to.equal(undefined);
    expect(deathDeclarationProblem('N3', cluster, ['N2'])).to.equal(undefined);
    expect(deathDeclarationProblem('N4', cluster, ['N2', 'N3'])).to.match(/at most 2 of 5/);
    expect(deathDeclarationProblem('N1', cluster, [])).to.match(/alive/);
    expect(deathDeclarationProblem('N9', cluster, [])).to.match(/not a node/);
  });

  it('is logged, survives a restart and a checkpoint, and a readmission undoes it', () => {
    const p = live();
    const effects = p.onMembership('B', true);
    expect(effects).to.deep.equal([{ type: 'persist', entry: { t: 'member', node: 'B', dead: true } }]);
    expect(p.onMembership('B', true)).to.deep.equal([]);
    const fromCheckpoint = new Participant();
    for (const entry of p.checkpoint(10)) fromCheckpoint.replay(entry);
    expect(fromCheckpoint.deadNodes()).to.deep.equal(['B']);
    expect(p.onMembership('B', false)).to.deep.equal([{ type: 'persist', entry: { t: 'member', node: 'B', dead: false } }]);
    expect(p.deadNodes()).to.deep.equal([]);
  });

  it('a late yes voter is never asked to accept a commit that is not final (found by the simulation, 5 nodes, seed 2528)', () => {
    const coord = new CoordinatorTxn({ txnId: 't1', op, self: 'N1', nodes: ['N1', 'N2', 'N3', 'N4', 'N5'], quorum: 3, prepareTimeoutMs: 100, commitTimeoutMs: 100, commitResends: 3 });
    coord.start();
    const yes = { vote: 'yes' as const, epoch: 1, generation: 0 };
    coord.onVote('N1', yes);
    coord.onVote('N2', yes);
    coord.onVote('N3', yes);
    // N4's yes comes after the decision; the commit is not final (no W acceptances yet).
    expect(coord.onVote('N4', yes)).to.deep.equal([]);
    const resent = coord.onTimer('commit').filter((e) => e.type === 'send');
    expect(resent.map((e) => (e.type === 'send' ? e.to : ''))).to.not.include('N4');
    expect(resent.length).to.be.greaterThan(0);
  });
});
