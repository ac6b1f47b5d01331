import { expect } from 'chai';
import { catchUpSource, copyStillValid, repairVerdict } from '../../lib/core/convergence.js';

// Catch-up's and repair's decisions, pure (lib/core/convergence.ts); lib/cluster/catch-up.ts and the simulation
// both run them.

describe('convergence decisions', () => {
  const at = (peer: string, generation: number, epoch = 1, live = true) => ({ peer, live, epoch, generation });

  it('catches up from the newest replica of the same incarnation, and from none when no peer is ahead', () => {
    expect(catchUpSource({ epoch: 1, generation: 3 }, [at('a', 4), undefined, at('b', 6), at('c', 9, 2)])?.peer).to.equal('b');
    expect(catchUpSource({ epoch: 1, generation: 3 }, [at('a', 3), at('b', 2), at('c', 7, 1, false)])).to.equal(undefined);
  });

  it('lets a copy go ahead only if nothing moved the replica since it was decided on (a push committed meanwhile is never undone)', () => {
    const live = (generation: number) => ({ state: 'live' as const, epoch: 1, generation });
    expect(copyStillValid('catch-up', live(3), false, { epoch: 1, generation: 3 }, { epoch: 1, generation: 5 })).to.equal(true);
    expect(copyStillValid('catch-up', live(5), false, { epoch: 1, generation: 3 }, { epoch: 1, generation: 5 })).to.equal(false);
    expect(copyStillValid('catch-up', live(3), true, { epoch: 1, generation: 3 }, { epoch: 1, generation: 5 })).to.equal(false);
    expect(copyStillValid('repair', live(4), false, { epoch: 1, generation: 4 }, { epoch: 1, generation: 4 })).to.equal(true);
    // Defect 3: a push committed between the comparison and the lock moved us to 5: no repair.
    expect(copyStillValid('repair', live(5), false, { epoch: 1, generation: 4 }, { epoch: 1, generation: 4 })).to.equal(false);
    expect(copyStillValid('repair', { state: 'deleted', epoch: 2, generation: 0 }, false, { epoch: 1, generation: 4 }, { epoch: 1, generation: 4 })).to.equal(false);
  });

  it('repairs a replica from the majority digest, never the majority from a minority, and only reports a tie', () => {
    expect(repairVerdict('x', [{ peer: 'a', digest: 'x' }, { peer: 'b', digest: 'x' }])).to.deep.equal({ type: 'agreed' });
    expect(repairVerdict('x', [{ peer: 'a', digest: 'y' }, { peer: 'b', digest: 'y' }])).to.deep.equal({ type: 'repair', source: 'a', digest: 'y' });
    expect(repairVerdict('x', [{ peer: 'a', digest: 'x' }, { peer: 'b', digest: 'y' }])).to.deep.equal({ type: 'not-mine' });
    expect(repairVerdict('x', [{ peer: 'a', digest: 'y' }])).to.deep.equal({ type: 'tie' });
  });
});
