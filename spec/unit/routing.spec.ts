import { expect } from 'chai';
import { headAfterPush, parseUpdates } from '../../lib/cluster/push-service.js';
import { pickCoordinator, planRead, type ReplicaAnswer } from '../../lib/core/routing.js';
import { ZERO_OID } from '../../lib/core/txn-core.js';

const A = 'http://a';
const B = 'http://b';
const C = 'http://c';
const at = (node: string, generation: number, extra: Partial<{ live: boolean; epoch: number }> = {}) =>
  ({ node, reachable: true, live: extra.live ?? true, version: { epoch: extra.epoch ?? 1, generation } }) as const;
const down = (node: string): ReplicaAnswer => ({ node, reachable: false });

describe('routing', () => {
  describe('pickCoordinator', () => {
    it('is the same on every node whatever order the nodes are listed in', () => {
      for (const repo of ['a/b', 'x/y', 'alice/demo', 'o/r']) {
        expect(pickCoordinator(repo, [A, B, C])).to.equal(pickCoordinator(repo, [C, A, B]));
      }
    });

    it('moves only the repos of a node that leaves', () => {
      const repos = Array.from({ length: 300 }, (_, i) => `o/r${i}`);
      let moved = 0;
      const spread = new Set<string>();
      for (const repo of repos) {
        const before = pickCoordinator(repo, [A, B, C])!;
        spread.add(before);
        const after = pickCoordinator(repo, [A, B])!;
        if (before !== C) expect(after).to.equal(before);
        else moved += 1;
      }
      expect(spread.size).to.equal(3);
      expect(moved).to.be.greaterThan(50);
    });

    it('has no coordinator without live nodes', () => {
      expect(pickCoordinator('o/r', [])).to.equal(undefined);
    });
  });

  describe('planRead', () => {
    it('serves locally when our copy is the newest among R answers', () => {
      expect(planRead(at(A, 3), [at(B, 3), down(C)], 2)).to.deep.equal({ action: 'local' });
    });

    it('proxies to the newest replica when ours is behind', () => {
      expect(planRead(at(A, 2), [at(B, 3), at(C, 2)], 2)).to.deep.include({ action: 'proxy', to: B });
    });

    it('refuses when fewer than R nodes answer, naming the unreachable ones', () => {
      expect(planRead(at(A, 3), [down(B), down(C)], 2)).to.deep.equal({ action: 'unavailable', reached: 1, needed: 2, unreachable: [B, C] });
    });

    it('proxies to a peer that has a repo we missed, and says not found when nobody has it', () => {
      expect(planRead(at(A, 0, { live: false, epoch: 0 }), [at(B, 0)], 2)).to.deep.include({ action: 'proxy', to: B });
      expect(planRead(at(A, 0, { live: false, epoch: 0 }), [at(B, 0, { live: false, epoch: 0 })], 2)).to.deep.equal({ action: 'not_found' });
    });

    it('a newer delete beats an older live copy', () => {
      expect(planRead(at(A, 5), [at(B, 0, { live: false, epoch: 2 })], 2)).to.deep.equal({ action: 'not_found' });
    });

    it('with R = 1 (W = N) our own copy is always current', () => {
      expect(planRead(at(A, 1), [down(B)], 1)).to.deep.equal({ action: 'local' });
    });
  });
});

describe('push hook input', () => {
  const a = 'a'.repeat(40);
  const b = 'b'.repeat(40);

  it('parses pre-receive lines and refuses malformed ones or too many refs', () => {
    expect(parseUpdates(`${ZERO_OID} ${a} refs/heads/main\n${a} ${b} refs/notes/commits\n`, 10)).to.deep.equal([
      { old: ZERO_OID, new: a, ref: 'refs/heads/main' },
      { old: a, new: b, ref: 'refs/notes/commits' },
    ]);
    expect(() => parseUpdates(`${a} ${b} main\n`, 10)).to.throw(/malformed/);
    expect(() => parseUpdates(`${a} ${b} refs/heads/x y\n`, 10)).to.throw(/malformed/);
    expect(() => parseUpdates(`${a} ${b} refs/heads/x\n${a} ${b} refs/heads/y\n`, 1)).to.throw(/at most 1/);
  });

  it("refuses every ref name git would refuse and the cluster's own namespaces, naming the reason", () => {
    const refused = ['HEAD', 'refs/HEAD', 'refs/x', 'refs/lost+found/1.2/heads/main', 'refs/quorum-fetch/a/b', 'refs/heads/a..b', 'refs/heads/.x',
      'refs/heads/x.lock', 'refs/heads/x/', 'refs/heads/x.', 'refs/heads/a@{1}', 'refs/heads/a~1', 'refs/heads/a:b', 'refs/heads/a\\b', 'refs/heads//x'];
    for (const ref of refused) {
      expect(() => parseUpdates(`${ZERO_OID} ${a} ${ref}\n`, 10), ref).to.throw(/refusing|malformed/);
    }
    for (const ref of ['refs/heads/main', 'refs/tags/v1.0', 'refs/notes/commits', 'refs/heads/feature/x-1', 'refs/changes/01/1/1']) {
      expect(parseUpdates(`${ZERO_OID} ${a} ${ref}\n`, 10), ref).to.have.length(1);
    }
  });

  it('points HEAD at the pushed branch when the first push does not create the branch HEAD names', () => {
    expect(headAfterPush('refs/heads/main', {}, [{ ref: 'refs/heads/master', old: ZERO_OID, new: a }])).to.equal('refs/heads/master');
    expect(headAfterPush('refs/heads/main', {}, [{ ref: 'refs/heads/main', old: ZERO_OID, new: a }])).to.equal(undefined);
    expect(headAfterPush('refs/heads/main', {}, [{ ref: 'refs/tags/v1', old: ZERO_OID, new: a }])).to.equal(undefined);
    expect(
      headAfterPush('refs/heads/main', {}, [
        { ref: 'refs/heads/zeta', old: ZERO_OID, new: a },
        { ref: 'refs/heads/alpha', old: ZERO_OID, new: a },
      ]),
    ).to.equal('refs/heads/alpha');
    expect(headAfterPush('refs/heads/main', { 'refs/heads/main': a }, [{ ref: 'refs/heads/dev', old: ZERO_OID, new: b }])).to.equal(undefined);
  });
});
