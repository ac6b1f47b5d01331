// Quorum arithmetic. Pure: no I/O.
//
// Writes need W votes counting the coordinator; reads ask R = N - W + 1 nodes so that every read set
// meets every write quorum (W + R > N). A W of N/2 or less would let two disjoint halves both commit,
// so it is refused where it is built (as praefect refuses `threshold*2 <= totalVotes`).

export type VoteResult = 'pending' | 'won' | 'lost';

export function majority(clusterSize: number): number {
  return Math.floor(clusterSize / 2) + 1;
}

/** Validates a requested write quorum; returns it, or throws with a message a person can act on. */
export function writeQuorum(clusterSize: number, requested?: number): number {
  if (!Number.isInteger(clusterSize) || clusterSize < 1) {
    throw new Error(`cluster size must be a positive integer, got ${clusterSize}`);
  }
  if (requested === undefined) return majority(clusterSize);
  if (!Number.isInteger(requested)) throw new Error(`QUORUM must be an integer, got ${requested}`);
  if (requested * 2 <= clusterSize) {
    throw new Error(
      `QUORUM=${requested} is not a majority of ${clusterSize} nodes: two disjoint groups of ${requested} could ` +
        `both commit conflicting writes. Use at least ${majority(clusterSize)} (floor(N/2)+1).`,
    );
  }
  if (requested > clusterSize) {
    throw new Error(`QUORUM=${requested} exceeds the cluster size ${clusterSize}: no write could ever commit.`);
  }
  return requested;
}

export function readQuorum(clusterSize: number, write: number): number {
  return clusterSize - write + 1;
}

/**
 * The outcome of a vote as soon as it is certain: won once `yes` reaches the quorum, lost once the
 * votes still outstanding cannot reach it.
 */
export function voteResult(yes: number, no: number, clusterSize: number, quorum: number): VoteResult {
  if (yes >= quorum) return 'won';
  if (clusterSize - no < quorum) return 'lost';
  return 'pending';
}
