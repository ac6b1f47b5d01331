import { compareVersions, type CatalogEntry, type NodeId } from './txn-core.js';

// What a set of nodes says about which repos exist, as plain data: the management API's list and the
// operator's `verify` both decide from it. Pure: catalogs in, a decision out.

/**
 * The state of one repo that the newest answer implies, by the rule planRead (lib/core/routing.ts) uses for
 * git reads: the newest live copy, unless a delete at a strictly newer epoch says it is gone. A delete
 * starts a new epoch, so a live copy and a tombstone never share one; a tie keeps the live copy.
 * undefined when no entry was given.
 */
export function newestState(entries: readonly CatalogEntry[]): CatalogEntry | undefined {
  let live: CatalogEntry | undefined;
  let deleted: CatalogEntry | undefined;
  for (const e of entries) {
    const entry = { state: e.state, epoch: e.epoch, generation: e.generation ?? 0 };
    if (entry.state === 'live') {
      if (live === undefined || compareVersions(entry, live) > 0) live = entry;
    } else if (deleted === undefined || compareVersions(entry, deleted) > 0) {
      deleted = entry;
    }
  }
  if (live === undefined) return deleted;
  if (deleted !== undefined && deleted.epoch > live.epoch) return deleted;
  return live;
}

export type CatalogAnswer = { node: NodeId; reachable: true; catalog: Readonly<Record<string, CatalogEntry>> } | { node: NodeId; reachable: false };

export type CatalogMerge =
  | { action: 'merged'; repos: Record<string, CatalogEntry> }
  | { action: 'unavailable'; reached: number; needed: number; unreachable: NodeId[] };

/**
 * Merges the catalogs of at least `readQuorum` nodes (R = N-W+1, so the set meets every write quorum
 * and sees every acknowledged create and delete): the newest state per repo wins. Fewer answers than
 * R cannot prove a repo absent, so the merge is refused.
 */
export function mergeCatalogs(answers: readonly CatalogAnswer[], readQuorum: number): CatalogMerge {
  const reached = answers.filter((a): a is Extract<CatalogAnswer, { reachable: true }> => a.reachable);
  if (reached.length < readQuorum) {
    return { action: 'unavailable', reached: reached.length, needed: readQuorum, unreachable: answers.filter((a) => !a.reachable).map((a) => a.node) };
  }
  const byRepo = new Map<string, CatalogEntry[]>();
  for (const a of reached) {
    for (const [repoId, entry] of Object.entries(a.catalog)) byRepo.set(repoId, [...(byRepo.get(repoId) ?? []), entry]);
  }
  const repos: Record<string, CatalogEntry> = {};
  for (const [repoId, entries] of [...byRepo].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) repos[repoId] = newestState(entries)!;
  return { action: 'merged', repos };
}

/**
 * The newest settings of a repo among catalogs that meet every write quorum (the same R answers as
 * mergeCatalogs): those of the newest live incarnation with the highest settingsVersion. A change is
 * based on these, so a node behind on settings still coordinates it right (its own stale replica
 * votes no; a quorum of others commits). `not_found` when the newest state is not live.
 */
export function newestSettings(
  answers: readonly CatalogAnswer[],
  repoId: string,
  readQuorum: number,
): CatalogMerge | { action: 'not_found' } | { action: 'found'; epoch: number; settingsVersion: number; entry: CatalogEntry | undefined } {
  const merged = mergeCatalogs(answers, readQuorum);
  if (merged.action === 'unavailable') return merged;
  const state = merged.repos[repoId];
  if (state?.state !== 'live') return { action: 'not_found' };
  let best: CatalogEntry | undefined;
  for (const a of answers) {
    if (!a.reachable) continue;
    const e = Object.hasOwn(a.catalog, repoId) ? a.catalog[repoId] : undefined;
    if (e?.state !== 'live' || e.epoch !== state.epoch) continue;
    if (best === undefined || (e.settingsVersion ?? 0) > (best.settingsVersion ?? 0)) best = e;
  }
  return { action: 'found', epoch: state.epoch, settingsVersion: best?.settingsVersion ?? 0, entry: best };
}
