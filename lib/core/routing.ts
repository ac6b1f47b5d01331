import { createHash } from 'node:crypto';
import { compareVersions, type NodeId, type RepoVersion } from './txn-core.js';

// Routing decisions as plain data (the proxy only carries them out), in the manner of praefect's router.

/**
 * The node that coordinates pushes to a repo: rendezvous (highest-random-weight) hashing over the
 * live nodes, so every node picks the same one and only the repos of a node that dies move.
 * Safety never rests on this choice: two coordinators at once are serialized by the 2PC locks and
 * version checks; this only keeps pushes to one repo from contending.
 */
export function pickCoordinator(repoId: string, liveNodes: readonly NodeId[]): NodeId | undefined {
  let best: NodeId | undefined;
  let bestScore = '';
  for (const node of liveNodes) {
    const score = createHash('sha256').update(`${node}\n${repoId}`).digest('hex');
    if (best === undefined || score > bestScore) {
      best = node;
      bestScore = score;
    }
  }
  return best;
}

export type ReplicaAnswer =
  | { node: NodeId; reachable: true; live: boolean; version: RepoVersion }
  | { node: NodeId; reachable: false };

export type ReadPlan =
  | { action: 'local' }
  | { action: 'proxy'; to: NodeId; newest: RepoVersion }
  | { action: 'not_found' }
  | { action: 'unavailable'; reached: number; needed: number; unreachable: NodeId[] };

/**
 * Where a read must be served. Every acknowledged write is committed on W nodes, and any R = N-W+1
 * nodes include one of them, so the newest version among R answers (ours included) is at least
 * the newest acknowledged one. Served locally only when our copy is at that version.
 */
export function planRead(self: ReplicaAnswer & { reachable: true }, peers: readonly ReplicaAnswer[], readQuorum: number): ReadPlan {
  const answers = [self, ...peers].filter((a): a is Extract<ReplicaAnswer, { reachable: true }> => a.reachable);
  if (answers.length < readQuorum) {
    return { action: 'unavailable', reached: answers.length, needed: readQuorum, unreachable: peers.filter((p) => !p.reachable).map((p) => p.node) };
  }
  const candidates = answers.filter((a) => a.live);
  if (candidates.length === 0) return { action: 'not_found' };
  let newest = candidates[0]!;
  for (const a of candidates) if (compareVersions(a.version, newest.version) > 0) newest = a;
  // A deleted repo at a newer epoch than every live copy means it is gone.
  const newestAny = answers.reduce((m, a) => (compareVersions(a.version, m.version) > 0 ? a : m), answers[0]!);
  if (!newestAny.live && newestAny.version.epoch > newest.version.epoch) return { action: 'not_found' };
  if (self.live && compareVersions(self.version, newest.version) === 0) return { action: 'local' };
  return { action: 'proxy', to: newest.node, newest: newest.version };
}
