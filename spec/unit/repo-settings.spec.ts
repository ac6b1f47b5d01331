import { expect } from 'chai';
import { applySettingsChange, DEFAULT_REPO_SETTINGS, MAX_COLLABORATORS, type RepoSettings } from '../../lib/core/repo-settings.js';
import { newestSettings } from '../../lib/core/catalog-merge.js';
import { Participant, ZERO_OID, type CoordinatorResult, type TxnOp } from '../../lib/core/txn-core.js';
import { Sim } from './sim.js';

const A = 'http://a';
const B = 'http://b';
const C = 'http://c';
const OID1 = '1'.repeat(40);
const OID2 = '2'.repeat(40);

const publicRepo: RepoSettings = { visibility: 'public', collaborators: { bob: 'write' }, protectedBranches: ['refs/heads/main'] };
const settingsOp = (settings: RepoSettings, settingsVersion: number, epoch = 1): TxnOp => ({ kind: 'settings', repoId: 'o/r', settings, base: { epoch, settingsVersion } });

async function created(sim: Sim): Promise<void> {
  sim.begin(A, { kind: 'create', repoId: 'o/r' });
  await sim.run();
}

function outcome(result: CoordinatorResult | undefined): string {
  return result === undefined ? 'none' : result.outcome === 'committed' ? 'committed' : `aborted:${result.code}`;
}

describe('repo settings', () => {
  describe('validation of a change request (applySettingsChange)', () => {
    it('keeps fields left out, replaces lists given, and normalizes branch names to sorted full refs', () => {
      const result = applySettingsChange(DEFAULT_REPO_SETTINGS, { protected_branches: ['main', 'refs/heads/dev', 'main'], collaborators: { zed: 'read', bob: 'admin' } });
      expect(result).to.deep.equal({
        settings: { visibility: 'private', collaborators: { bob: 'admin', zed: 'read' }, protectedBranches: ['refs/heads/dev', 'refs/heads/main'] },
      });
    });

    const invalid: [string, unknown][] = [
      ['not an object', []],
      ['an unknown field', { visiblity: 'public' }],
      ['a bad visibility', { visibility: 'internal' }],
      ['a bad level', { collaborators: { bob: 'owner' } }],
      ['a bad user name', { collaborators: { '-bob': 'read' } }],
      ['too many collaborators', { collaborators: Object.fromEntries(Array.from({ length: MAX_COLLABORATORS + 1 }, (_, i) => [`u${i}`, 'read'])) }],
      ['a bad branch name', { protected_branches: ['a..b'] }],
      ['a cluster namespace', { protected_branches: ['refs/quorum-fetch/x'] }],
      ['a branch that is not a string', { protected_branches: [1] }],
    ];
    for (const [what, body] of invalid) {
      it(`refuses ${what}`, () => {
        expect(applySettingsChange(DEFAULT_REPO_SETTINGS, body)).to.have.property('problem').that.is.a('string');
      });
    }
  });

  describe('the settings transaction', () => {
    it('commits on every node, bumps settingsVersion and leaves the refs version alone', async () => {
      const sim = new Sim([A, B, C], 2);
      await created(sim);
      const txn = sim.begin(B, settingsOp(publicRepo, 0));
      await sim.run();
      expect(outcome(sim.results.get(txn))).to.equal('committed');
      for (const id of [A, B, C]) {
        expect(sim.node(id).participant.repo('o/r')).to.deep.equal({ state: 'live', epoch: 1, generation: 0, settings: publicRepo, settingsVersion: 1 });
        expect(sim.node(id).participant.lockedBy('o/r')).to.equal(undefined);
      }
    });

    it('refuses a change based on an old settings version (stale) and changes nothing', async () => {
      const sim = new Sim([A, B, C], 2);
      await created(sim);
      sim.begin(A, settingsOp(publicRepo, 0));
      await sim.run();
      const second = sim.begin(C, settingsOp(DEFAULT_REPO_SETTINGS, 0));
      await sim.run();
      expect(outcome(sim.results.get(second))).to.equal('aborted:stale');
      for (const id of [A, B, C]) expect(sim.node(id).participant.repo('o/r')?.settings).to.deep.equal(publicRepo);
    });

    it('refuses a change of a repo that is not live (repo_not_found)', async () => {
      const sim = new Sim([A, B, C], 2);
      const txn = sim.begin(A, settingsOp(publicRepo, 0));
      await sim.run();
      expect(outcome(sim.results.get(txn))).to.equal('aborted:repo_not_found');
    });

    it('locks the repo while prepared: a push meanwhile is refused as busy', () => {
      const p = new Participant();
      p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1, generation: 0 });
      const effects = p.onPrepare({ type: 'prepare', txnId: 't1', op: settingsOp(publicRepo, 0), coordinator: A });
      expect(effects.map((e) => e.type)).to.deep.equal(['stage']);
      const push: TxnOp = { kind: 'push', repoId: 'o/r', updates: [{ ref: 'refs/heads/x', old: ZERO_OID, new: OID1 }], base: { epoch: 1, generation: 0 } };
      expect(p.onPrepare({ type: 'prepare', txnId: 't2', op: push, coordinator: A }, {}).at(-1)).to.deep.equal({ type: 'reply', vote: { vote: 'no', code: 'repo_busy' } });
    });

    it('survives a restart (log replay) and a checkpoint of the log', async () => {
      const sim = new Sim([A, B, C], 2);
      await created(sim);
      sim.begin(A, settingsOp(publicRepo, 0));
      await sim.run();
      sim.crash(B);
      await sim.restart(B);
      expect(sim.node(B).participant.repo('o/r')).to.deep.include({ settings: publicRepo, settingsVersion: 1 });
      const fromCheckpoint = new Participant();
      for (const entry of sim.node(B).participant.checkpoint(10)) fromCheckpoint.replay(entry);
      expect(fromCheckpoint.repo('o/r')).to.deep.include({ settings: publicRepo, settingsVersion: 1 });
    });

    it('gives a create its initial settings at settingsVersion 0', async () => {
      const sim = new Sim([A, B, C], 2);
      sim.begin(A, { kind: 'create', repoId: 'o/r', settings: publicRepo });
      await sim.run();
      for (const id of [A, B, C]) expect(sim.node(id).participant.repo('o/r')).to.deep.include({ settings: publicRepo, settingsVersion: 0 });
    });
  });

  describe('the base of a change (newestSettings)', () => {
    it('takes the highest settings version of the newest live incarnation among R answers, whatever the refs', () => {
      const answers = [
        { node: A, reachable: true as const, catalog: { 'o/r': { state: 'live' as const, epoch: 2, generation: 9, settingsVersion: 1, settings: DEFAULT_REPO_SETTINGS } } },
        { node: B, reachable: true as const, catalog: { 'o/r': { state: 'live' as const, epoch: 2, generation: 3, settingsVersion: 2, settings: publicRepo } } },
        { node: C, reachable: false as const },
      ];
      expect(newestSettings(answers, 'o/r', 2)).to.deep.include({ action: 'found', epoch: 2, settingsVersion: 2 });
      expect(newestSettings(answers, 'o/x', 2)).to.deep.equal({ action: 'not_found' });
      expect(newestSettings(answers.slice(0, 1), 'o/r', 2)).to.have.property('action', 'unavailable');
    });
  });

  describe('anti-entropy', () => {
    it('a node that missed a settings change adopts it from a peer at the same epoch', async () => {
      const sim = new Sim([A, B, C], 2);
      await created(sim);
      sim.crash(C);
      sim.begin(A, settingsOp(publicRepo, 0));
      await sim.run();
      await sim.restart(C);
      expect(sim.node(C).participant.repo('o/r')?.settingsVersion ?? 0).to.equal(0);
      await sim.sync(C);
      expect(sim.node(C).participant.repo('o/r')).to.deep.include({ settings: publicRepo, settingsVersion: 1 });
      const synced = sim.node(C).log.at(-1);
      expect(synced).to.deep.include({ t: 'synced', repoId: 'o/r', settingsVersion: 1 });
    });

    it('never adopts older settings, nor settings of another epoch without the epoch', () => {
      const p = new Participant();
      p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 2, generation: 3, settings: publicRepo, settingsVersion: 4 });
      expect(p.onPeerState('o/r', { state: 'live', epoch: 2, generation: 5, settings: DEFAULT_REPO_SETTINGS, settingsVersion: 2 })).to.deep.equal([]);
      expect(p.onPeerState('o/r', { state: 'live', epoch: 1, generation: 9, settings: DEFAULT_REPO_SETTINGS, settingsVersion: 9 })).to.deep.equal([]);
      expect(p.repo('o/r')).to.deep.equal({ state: 'live', epoch: 2, generation: 3, settings: publicRepo, settingsVersion: 4 });
    });
  });

  describe('protected branches at prepare', () => {
    const at = (settings: RepoSettings): Participant => {
      const p = new Participant();
      p.replay({ t: 'synced', repoId: 'o/r', state: 'live', epoch: 1, generation: 1, settings, settingsVersion: 1 });
      return p;
    };
    const push = (updates: { ref: string; old: string; new: string }[]): TxnOp => ({ kind: 'push', repoId: 'o/r', updates, base: { epoch: 1, generation: 1 } });

    it('every participant refuses a push that deletes a protected branch (protected_ref) and locks nothing', () => {
      const p = at(publicRepo);
      const effects = p.onPrepare({ type: 'prepare', txnId: 't1', op: push([{ ref: 'refs/heads/main', old: OID1, new: ZERO_OID }]), coordinator: A }, { 'refs/heads/main': OID1 });
      expect(effects.at(-1)).to.deep.equal({ type: 'reply', vote: { vote: 'no', code: 'protected_ref', detail: 'refs/heads/main' } });
      expect(p.lockedBy('o/r')).to.equal(undefined);
    });

    it('lets a push move a protected branch (ancestry is the coordinator hook\'s check) and delete an unprotected one', () => {
      const p = at(publicRepo);
      const updates = [
        { ref: 'refs/heads/main', old: OID1, new: OID2 },
        { ref: 'refs/heads/topic', old: OID1, new: ZERO_OID },
      ];
      const effects = p.onPrepare({ type: 'prepare', txnId: 't1', op: push(updates), coordinator: A }, { 'refs/heads/main': OID1, 'refs/heads/topic': OID1 });
      expect(effects.map((e) => e.type)).to.deep.equal(['stage']);
    });

    it('a participant refuses a push checked against another settings version (stale): a coordinator behind on protection cannot force one through', () => {
      const p = at(publicRepo);
      const op: TxnOp = { kind: 'push', repoId: 'o/r', updates: [{ ref: 'refs/heads/main', old: OID1, new: OID2 }], base: { epoch: 1, generation: 1 }, settingsVersion: 0 };
      const effects = p.onPrepare({ type: 'prepare', txnId: 't1', op, coordinator: A }, { 'refs/heads/main': OID1 });
      expect(effects.at(-1)).to.deep.equal({ type: 'reply', vote: { vote: 'no', code: 'stale', detail: 'at settings version 1, push checked against 0' } });
      expect(p.lockedBy('o/r')).to.equal(undefined);
    });

    it('a coordinator reports the refusal as protected_ref with the branch', async () => {
      const sim = new Sim([A, B, C], 2);
      sim.begin(A, { kind: 'create', repoId: 'o/r', settings: publicRepo });
      await sim.run();
      const first = sim.begin(A, { kind: 'push', repoId: 'o/r', updates: [{ ref: 'refs/heads/main', old: ZERO_OID, new: OID1 }], base: { epoch: 1, generation: 0 } });
      await sim.run();
      expect(outcome(sim.results.get(first))).to.equal('committed');
      const del = sim.begin(B, push([{ ref: 'refs/heads/main', old: OID1, new: ZERO_OID }]));
      await sim.run();
      expect(sim.results.get(del)).to.deep.include({ outcome: 'aborted', code: 'protected_ref', detail: 'refs/heads/main' });
      for (const id of [A, B, C]) expect(sim.node(id).refs.get('o/r')).to.deep.equal({ 'refs/heads/main': OID1 });
    });
  });
});
