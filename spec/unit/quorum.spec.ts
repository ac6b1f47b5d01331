import { expect } from 'chai';
import { majority, readQuorum, voteResult, writeQuorum } from '../../lib/core/quorum.js';

describe('quorum', () => {
  for (const [n, w] of [[1, 1], [2, 2], [3, 2], [4, 3], [5, 3], [6, 4], [7, 4]] as const) {
    it(`a cluster of ${n} needs ${w} votes and reads from ${n - w + 1}`, () => {
      expect(majority(n)).to.equal(w);
      expect(writeQuorum(n)).to.equal(w);
      expect(readQuorum(n, w) + w).to.be.greaterThan(n);
    });
  }

  it('accepts a raised quorum up to N, where reads need only the local copy', () => {
    expect(writeQuorum(3, 3)).to.equal(3);
    expect(readQuorum(3, 3)).to.equal(1);
  });

  for (const [n, q, why] of [[6, 3, /not a majority/], [3, 1, /not a majority/], [2, 1, /not a majority/], [3, 4, /exceeds the cluster size/], [3, 2.5, /integer/]] as const) {
    it(`refuses QUORUM=${q} for ${n} nodes, saying why`, () => {
      expect(() => writeQuorum(n, q)).to.throw(why);
    });
  }

  it('knows a vote is won or lost as soon as it is certain', () => {
    expect(voteResult(2, 0, 3, 2)).to.equal('won');
    expect(voteResult(1, 1, 3, 2)).to.equal('pending');
    expect(voteResult(1, 2, 3, 2)).to.equal('lost');
    expect(voteResult(0, 1, 2, 2)).to.equal('lost');
    expect(voteResult(3, 0, 6, 4)).to.equal('pending');
    expect(voteResult(3, 3, 6, 4)).to.equal('lost');
  });
});
