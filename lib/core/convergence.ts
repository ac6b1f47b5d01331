import { compareVersions, type CatalogEntry, type NodeId, type RepoVersion } from './txn-core.js';

// The decisions of catch-up and divergence repair, pure: which peer a lagging replica copies from,
// whether a copy decided a moment ago may still go ahead under the repo's lock, and what the digests
// of replicas at one version say. lib/cluster/catch-up.ts carries them out against git and the peers; the
// seeded simulation (spec/unit/sim.ts) runs the same functions against its in-memory replicas.

/** What a peer said of its replica of a repo (undefined: it did not answer). */
export interface PeerReplica extends RepoVersion {
  peer: NodeId;
  live: boolean;
}

/**
 * The peer to catch up from: a replica of the same incarnation (epoch) at the newest generation
 * ahead of ours. Undefined when no peer is ahead: nothing to do. A different epoch is never a source:
 * a newer incarnation is adopted by anti-entropy first (as an empty repo), an older one is behind us.
 */
export function catchUpSource<T extends PeerReplica>(mine: RepoVersion, answers: readonly (T | undefined)[]): T | undefined {
  let best: T | undefined;
  for (const answer of answers) {
    if (!answer?.live || answer.epoch !== mine.epoch || compareVersions(answer, mine) <= 0) continue;
    if (!best || answer.generation > best.generation) best = answer;
  }
  return best;
}

/**
 * Whether a copy decided on when this replica was at `decidedAt` may still go ahead, checked under
 * the repo's lock just before any ref moves, so a push committed meanwhile is never undone: a repair
 * only if the replica is still exactly at the version compared (and the source's snapshot is of that
 * version), a catch-up only if it is still strictly behind the snapshot of the same incarnation.
 */
export function copyStillValid(
  mode: 'catch-up' | 'repair',
  mine: CatalogEntry | undefined,
  locked: boolean,
  decidedAt: RepoVersion,
  snapshot: RepoVersion,
): boolean {
  if (locked || mine?.state !== 'live') return false;
  if (mode === 'repair') return compareVersions(mine, decidedAt) === 0 && compareVersions(mine, snapshot) === 0;
  return mine.epoch === snapshot.epoch && mine.generation < snapshot.generation;
}

export type RepairVerdict =
  | { type: 'agreed' }
  /** Our digest is held by more replicas than any other: the others repair themselves, not us. */
  | { type: 'not-mine' }
  /** As many replicas hold another digest as hold ours: no side can be proven right; reported. */
  | { type: 'tie' }
  | { type: 'repair'; source: NodeId; digest: string };

/**
 * Spokes-style check of one repo: our refs digest against the peers' at the same version. Only
 * answers at exactly our version count. A replica in the minority repairs itself from a member of the
 * largest other group; a tie is only reported.
 */
export function repairVerdict(own: string, peers: readonly { peer: NodeId; digest: string }[]): RepairVerdict {
  const groups = new Map<string, NodeId[]>([[own, []]]);
  for (const { peer, digest } of peers) groups.set(digest, [...(groups.get(digest) ?? []), peer]);
  if (groups.size === 1) return { type: 'agreed' };
  const ownCount = groups.get(own)!.length + 1;
  const [digest, nodes] = [...groups].filter(([d]) => d !== own).sort((a, b) => b[1].length - a[1].length)[0]!;
  if (nodes.length < ownCount) return { type: 'not-mine' };
  if (nodes.length === ownCount) return { type: 'tie' };
  return { type: 'repair', source: nodes[0]!, digest };
}
