import { expect } from 'chai';
import { Participant, resolveInDoubt, type CoordinatorResult } from '../../lib/core/txn-core.js';
import { Sim, seededRandom, type Envelope } from './sim.js';

const A = 'http://a';
const B = 'http://b';
const C = 'http://c';
const create = (repoId = 'o/r') => ({ kind: 'create' as const, repoId });
const remove = (repoId = 'o/r') => ({ kind: 'delete' as const, repoId });
/** The aborts a node that proved one tells its peers (best effort). */
const abortsOnly = (e: Envelope): boolean => e.kind === 'msg' && e.msg.type === 'abortTxn';

function committed(result: CoordinatorResult | undefined): Extract<CoordinatorResult, { outcome: 'committed' }> {
  expect(result?.outcome, JSON.stringify(result)).to.equal('committed');
  return result as Extract<CoordinatorResult, { outcome: 'committed' }>;
}

describe('two-phase commit core', () => {
  describe('coordinator and participants, all messages delivered', () => {
    it('commits a create on every node with epoch 1 and releases the locks', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      await sim.run();
      const result = committed(sim.results.get(txn));
      expect(result.epoch).to.equal(1);
      expect(result.confirmed).to.include(A);
      for (const id of [A, B, C]) {
        expect(sim.node(id).participant.repo('o/r')).to.deep.equal({ state: 'live', epoch: 1, generation: 0 });
        expect(sim.node(id).participant.lockedBy('o/r')).to.equal(undefined);
      }
    });

    it('persists every vote before replying and the decision before sending any commit', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      await sim.run();
      for (const id of [A, B, C]) {
        const persist = sim.trace.indexOf(`${id}:persist:${txn}`);
        const reply = sim.trace.indexOf(`${id}:reply:${txn}`);
        expect(persist).to.be.greaterThan(-1);
        expect(persist).to.be.lessThan(reply);
      }
      const decision = sim.trace.indexOf(`${A}:coord-persist:${txn}`);
      const firstCommit = sim.trace.indexOf(`${A}:coord-send-commitTxn:${txn}`);
      expect(decision).to.be.greaterThan(-1);
      expect(decision).to.be.lessThan(firstCommit);
    });

    it('refuses a create of a live repo with repo_exists and changes nothing', async () => {
      const sim = new Sim([A, B, C], 2);
      sim.begin(A, create());
      await sim.run();
      const second = sim.begin(B, create());
      await sim.run();
      expect(sim.results.get(second)).to.deep.include({ outcome: 'aborted', code: 'repo_exists' });
      for (const id of [A, B, C]) expect(sim.node(id).participant.repo('o/r')?.epoch).to.equal(1);
    });

    it('deletes with a higher epoch, and a create after the delete gets a higher one still', async () => {
      const sim = new Sim([A, B, C], 2);
      sim.begin(A, create());
      await sim.run();
      const del = sim.begin(B, remove());
      await sim.run();
      expect(committed(sim.results.get(del)).epoch).to.equal(2);
      const again = sim.begin(C, create());
      await sim.run();
      expect(committed(sim.results.get(again)).epoch).to.equal(3);
    });

    it('refuses a delete of an unknown repo with repo_not_found', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, remove());
      await sim.run();
      expect(sim.results.get(txn)).to.deep.include({ outcome: 'aborted', code: 'repo_not_found' });
    });
  });

  describe('with faults', () => {
    it('commits with one of three nodes down, and the node catches up by anti-entropy', async () => {
      const sim = new Sim([A, B, C], 2);
      sim.crash(C);
      const txn = sim.begin(A, create());
      await sim.run();
      await sim.advance(1000);
      committed(sim.results.get(txn));
      expect(sim.node(C).participant.repo('o/r')).to.equal(undefined);
      await sim.restart(C);
      await sim.sync(C);
      expect(sim.node(C).participant.repo('o/r')).to.deep.equal({ state: 'live', epoch: 1, generation: 0 });
      expect(sim.node(C).applied).to.deep.equal(['sync:o/r:live@1']);
    });

    it('aborts when the prepare timer fires without a quorum, naming the silent nodes, and leaves no repo', async () => {
      const sim = new Sim([A, B, C], 2);
      sim.crash(B);
      sim.crash(C);
      const txn = sim.begin(A, create());
      await sim.run();
      expect(sim.results.get(txn)).to.equal(undefined);
      await sim.advance(100);
      expect(sim.results.get(txn)).to.deep.equal({ outcome: 'aborted', code: 'quorum_unreachable', failed: [B, C] });
      expect(sim.node(A).participant.repo('o/r')).to.equal(undefined);
      expect(sim.node(A).participant.lockedBy('o/r')).to.equal(undefined);
      expect(sim.node(A).staged.size).to.equal(0);
    });

    it('still commits when the prepare to one node is lost', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      await sim.run({ drop: (e) => e.kind === 'msg' && e.msg.type === 'prepare' && e.to === C });
      committed(sim.results.get(txn));
    });

    it('re-sends a lost commit after the commit timeout', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      let dropped = 0;
      await sim.run({ drop: (e) => e.kind === 'msg' && e.msg.type === 'commitTxn' && e.to === B && (dropped += 1) === 1 });
      expect(sim.node(B).participant.status(txn)).to.equal('prepared');
      await sim.advance(100);
      expect(sim.node(B).participant.status(txn)).to.equal('committed');
    });

    it('a participant whose commits are all lost learns the outcome from the coordinator', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      // B's vote is lost too, so the decision's acceptors are A and C: C makes it final; B, unanswered,
      // is told the final commit (lost as well) and stays in doubt.
      const dropB = { drop: (e: Envelope) => (e.kind === 'msg' && e.msg.type === 'commitTxn' && e.to === B) || (e.kind === 'reply' && e.from === B && e.about === 'prepare') };
      await sim.run(dropB);
      await sim.advance(1000, dropB);
      committed(sim.results.get(txn));
      expect(sim.node(B).participant.inDoubt().map((t) => t.txnId)).to.deep.equal([txn]);
      expect(await sim.recover(B)).to.deep.equal({ [txn]: 'commit' });
      expect(sim.node(B).participant.repo('o/r')).to.deep.equal({ state: 'live', epoch: 1, generation: 0 });
    });

    it('with W = 2, a yes vote that came after the decision is not told to commit before the decision is final', async () => {
      // Found by the simulation (seed 17692): the commit timer's resend reached a late yes voter with
      // the commit marked final, so a node outside the acceptors applied a decision recovery then
      // proved aborted (refusals counted among the acceptors). Here the votes of A and B decide; C's
      // comes after; every commit to B, the other acceptor, is lost.
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      const dropB = { drop: (e: Envelope) => e.kind === 'msg' && e.msg.type === 'commitTxn' && e.to === B };
      await sim.run(dropB);
      await sim.advance(1000, dropB);
      // Never final: the client hears that the outcome is left to recovery, and C was never asked.
      expect(sim.results.get(txn)).to.deep.include({ outcome: 'committed', final: false, confirmed: [] });
      expect(sim.node(C).participant.status(txn)).to.equal('prepared');
      expect(sim.node(C).applied).to.deep.equal([]);
      // B (prepared) and C (asked, so it refuses) are N - W + 1 refusals: abort, everywhere.
      expect(await sim.recover(B)).to.deep.equal({ [txn]: 'abort' });
      await sim.advance(1000);
      for (const id of [A, B, C]) expect(sim.node(id).participant.repo('o/r'), id).to.equal(undefined);
    });

    it('gives the same outcome when every message is delivered twice, applying each change once', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      await sim.run({ duplicate: () => true });
      committed(sim.results.get(txn));
      for (const id of [A, B, C]) {
        expect(sim.node(id).applied).to.deep.equal(['create:o/r@1']);
        expect(sim.node(id).log.filter((e) => e.t === 'committed')).to.have.length(1);
      }
    });

    it('coordinator crash after the decision, before any replica accepted it: the live majority aborts without it', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      // Deliver prepares and votes, then crash A as soon as its decision is logged (no commit delivered).
      await sim.run({ drop: (e) => e.kind === 'msg' && e.msg.type === 'commitTxn' });
      sim.crash(A);
      expect(sim.node(A).log.some((e) => e.t === 'decision' && e.outcome === 'commit')).to.equal(true);
      expect(sim.node(B).participant.inDoubt()).to.have.length(1);
      expect(await sim.recover(B)).to.deep.equal({ [txn]: 'abort' });
      await sim.restart(A);
      expect(await sim.recover(A)).to.deep.equal({ [txn]: 'abort' });
      for (const id of [A, B, C]) expect(sim.node(id).participant.repo('o/r')).to.equal(undefined);
    });

    it('coordinator crash once one replica accepted the commit: every other node commits it without the coordinator', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      // B accepts (and applies) the commit; A crashes before hearing so, so its own replica is left in doubt.
      await sim.run({ drop: (e) => (e.kind === 'msg' && e.msg.type === 'commitTxn' && e.to !== B) || (e.kind === 'reply' && e.about === 'commitTxn') });
      sim.crash(A);
      expect(await sim.recover(C)).to.deep.equal({ [txn]: 'commit' });
      await sim.restart(A);
      expect(await sim.recover(A)).to.deep.equal({ [txn]: 'commit' });
      for (const id of [A, B, C]) expect(sim.node(id).participant.repo('o/r')).to.deep.equal({ state: 'live', epoch: 1, generation: 0 });
    });

    it('coordinator crash before the decision: presumed abort once the restarted coordinator is asked', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      await sim.run({ drop: (e) => e.kind === 'reply' });
      sim.crash(A);
      await sim.restart(A);
      // B's abort to its peers is lost: C must find the outcome itself.
      expect(await sim.recover(B, { drop: abortsOnly })).to.deep.equal({ [txn]: 'abort' });
      expect(sim.node(A).log.some((e) => e.t === 'decision' && e.outcome === 'abort')).to.equal(true);
      expect(await sim.recover(C)).to.deep.equal({ [txn]: 'abort' });
      expect(sim.node(B).participant.lockedBy('o/r')).to.equal(undefined);
    });

    it('participant crash while prepared: after restart it is still locked and in doubt, then resolves', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, create());
      await sim.run({ drop: (e) => e.kind === 'msg' && e.msg.type === 'commitTxn' && e.to === C });
      sim.crash(C);
      await sim.advance(1000);
      await sim.restart(C);
      expect(sim.node(C).participant.lockedBy('o/r')).to.equal(txn);
      expect(await sim.recover(C)).to.deep.equal({ [txn]: 'commit' });
      expect(sim.node(C).participant.lockedBy('o/r')).to.equal(undefined);
    });

    it('with the coordinator gone, refusals from N - W + 1 nodes prove an abort, fewer do not', async () => {
      const sim = new Sim([A, B, C, 'http://d', 'http://e'], 3);
      const txn = sim.begin(A, create());
      // Only B ever hears the prepare; A dies before deciding.
      await sim.run({ drop: (e) => e.kind === 'reply' || (e.kind === 'msg' && e.to !== B) });
      sim.crash(A);
      // C, D, E refuse: 3 >= 5 - 3 + 1, so no quorum of 3 can have voted yes.
      expect(await sim.recover(B, { drop: abortsOnly })).to.deep.equal({ [txn]: 'abort' });
      expect(sim.node(C).participant.status(txn)).to.equal('refused');
    });
  });

  describe('concurrent creates of one name', () => {
    it('never commits both, whatever the delivery order (200 seeded orders)', async () => {
      let someoneWon = 0;
      for (let seed = 1; seed <= 200; seed += 1) {
        const random = seededRandom(seed);
        const sim = new Sim([A, B, C], 2);
        const first = sim.begin(A, create());
        const second = sim.begin(B, create());
        await sim.run({ pick: (n) => Math.floor(random() * n) });
        await sim.advance(1000);
        const outcomes = [sim.results.get(first)?.outcome, sim.results.get(second)?.outcome];
        expect(outcomes.filter((o) => o === 'committed').length, `seed ${seed}`).to.be.at.most(1);
        if (outcomes.includes('committed')) someoneWon += 1;
        const states = [A, B, C].map((id) => JSON.stringify(sim.node(id).participant.repo('o/r') ?? null));
        const committedStates = states.filter((s) => s !== 'null');
        expect(new Set(committedStates).size, `seed ${seed}`).to.be.at.most(1);
      }
      expect(someoneWon).to.be.greaterThan(150);
    });
  });

  describe('resolveInDoubt', () => {
    const table: { answers: Parameters<typeof resolveInDoubt>[0]; n: number; w: number; verdict: string }[] = [
      { answers: { coordinator: 'committed', peers: [] }, n: 3, w: 2, verdict: 'commit' },
      { answers: { coordinator: 'unreachable', peers: ['committed'] }, n: 3, w: 2, verdict: 'commit' },
      { answers: { coordinator: 'aborted', peers: [] }, n: 3, w: 2, verdict: 'abort' },
      { answers: { coordinator: 'unreachable', peers: ['aborted'] }, n: 3, w: 2, verdict: 'abort' },
      // Defect 5: a dead coordinator no longer blocks 3 nodes. We (prepared) and the peer refuse: 2 = N - W + 1.
      { answers: { coordinator: 'unreachable', peers: ['refused'] }, n: 3, w: 2, verdict: 'abort' },
      { answers: { coordinator: 'unreachable', peers: ['accepted'] }, n: 3, w: 2, verdict: 'commit' },
      { answers: { coordinator: 'unreachable', peers: ['refused'], self: 'accepted' }, n: 3, w: 2, verdict: 'commit' },
      { answers: { coordinator: 'accepted', peers: ['refused'] }, n: 3, w: 2, verdict: 'abort' },
      { answers: { coordinator: 'accepted', peers: ['refused'], self: 'counted' }, n: 3, w: 2, verdict: 'wait' },
      { answers: { coordinator: 'unreachable', peers: ['refused', 'refused'] }, n: 4, w: 3, verdict: 'abort' },
      { answers: { coordinator: 'unreachable', peers: ['unreachable'] }, n: 3, w: 2, verdict: 'wait' },
      { answers: { coordinator: 'unreachable', peers: ['refused', 'refused', 'unreachable'] }, n: 5, w: 3, verdict: 'abort' },
      { answers: { coordinator: 'unreachable', peers: ['accepted', 'refused', 'unreachable'] }, n: 5, w: 3, verdict: 'wait' },
      { answers: { coordinator: 'unreachable', peers: ['accepted', 'refused', 'refused'] }, n: 5, w: 3, verdict: 'abort' },
      { answers: { coordinator: 'unreachable', peers: ['accepted', 'accepted', 'refused'] }, n: 5, w: 3, verdict: 'commit' },
    ];
    for (const row of table) {
      it(`${JSON.stringify(row.answers)} with N=${row.n}, W=${row.w} → ${row.verdict}`, () => {
        expect(resolveInDoubt(row.answers, row.n, row.w)).to.equal(row.verdict);
      });
    }
  });

  describe('Participant', () => {
    it('votes no with repo_busy while another transaction holds the repo', async () => {
      const p = new Participant();
      p.onPrepare({ type: 'prepare', txnId: 't1', op: create(), coordinator: A });
      p.onPrepared('t1');
      expect(p.onPrepare({ type: 'prepare', txnId: 't2', op: create(), coordinator: B })).to.deep.equal([
        { type: 'reply', vote: { vote: 'no', code: 'repo_busy' } },
      ]);
    });

    it('never adopts an older or equal peer state, and skips a repo it holds a lock on', async () => {
      const p = new Participant();
      p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 3 });
      expect(p.onPeerState('o/r', { state: 'deleted', epoch: 3, generation: 0 })).to.deep.equal([]);
      expect(p.onPeerState('o/r', { state: 'deleted', epoch: 2, generation: 0 })).to.deep.equal([]);
      p.onPrepare({ type: 'prepare', txnId: 't1', op: remove(), coordinator: A });
      expect(p.onPeerState('o/r', { state: 'deleted', epoch: 4, generation: 0 })).to.deep.equal([]);
    });

    it('a refusal is durable and makes a late prepare vote no', async () => {
      const p = new Participant();
      const answer = p.onQuery('t9', true);
      expect(answer.outcome).to.equal('refused');
      expect(answer.effects).to.deep.equal([{ type: 'persist', entry: { t: 'refused', txnId: 't9' } }]);
      expect(p.onPrepare({ type: 'prepare', txnId: 't9', op: create(), coordinator: A })).to.deep.equal([
        { type: 'reply', vote: { vote: 'no', code: 'refused' } },
      ]);
    });

    it('a live repo lost from disk goes back to generation 0 (durably), so it is behind and caught up', async () => {
      const p = new Participant();
      p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 2, generation: 7 });
      expect(p.onRepoLost('o/r')).to.deep.equal([{ type: 'persist', entry: { t: 'synced', repoId: 'o/r', state: 'live', epoch: 2, generation: 0 } }]);
      expect(p.versionOf('o/r')).to.deep.equal({ epoch: 2, generation: 0 });
      expect(p.onCaughtUp('o/r', { epoch: 2, generation: 7 })).to.have.length(1);
    });

    it('rebuilds catalog, locks and in-doubt transactions from its log', async () => {
      const p = new Participant();
      p.replay({ t: 'prepared', txnId: 't1', op: create('o/a'), coordinator: A });
      p.replay({ t: 'committed', txnId: 't1', epoch: 1 });
      p.replay({ t: 'applied', txnId: 't1' });
      p.replay({ t: 'prepared', txnId: 't2', op: create('o/b'), coordinator: B });
      expect(p.liveRepos()).to.deep.equal(['o/a']);
      expect(p.lockedBy('o/b')).to.equal('t2');
      expect(p.inDoubt()).to.deep.equal([{ txnId: 't2', op: create('o/b'), coordinator: B, status: 'prepared' }]);
      expect(p.unapplied()).to.deep.equal([]);
    });
  });
});
