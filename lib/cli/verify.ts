import { newestState } from '../core/catalog-merge.js';
import type { NodeInfo, PeerClient, RepoStateAnswer } from '../cluster/peer-client.js';
import { compareVersions, type CatalogEntry, type NodeId } from '../core/txn-core.js';

// `quorum-git verify`: asks one node for the cluster's nodes, then every node for its catalog and
// every repo's HEAD, refs and version, and reports each replica that does not agree with the newest
// state. The classification is pure (classifyRepo); runVerify only gathers the answers.
//
// What it sees is not one instant: a push in flight can make a replica look stale or locked for a
// moment. A finding that persists across runs is real.

export type ReplicaStatus = 'ok' | 'stale' | 'divergent' | 'locked' | 'missing' | 'unreachable';

export interface ReplicaReport {
  repo_id: string;
  node: NodeId;
  status: ReplicaStatus;
  epoch?: number;
  generation?: number;
  detail?: string;
}

/** The internal repo-state answer with refs, plus the lock flags the node adds. */
export type ReplicaState = RepoStateAnswer & { locked?: boolean; in_doubt?: boolean };

/** One reachable node's answer about one repo; `error` when its repo-state request failed. */
export type ReplicaObservation = { node: NodeId; state: ReplicaState } | { node: NodeId; error: string };

export interface NodeReport {
  url: NodeId;
  reachable: boolean;
  server_id?: string;
  error?: string;
}

export interface VerifyReport {
  ok: boolean;
  nodes: NodeReport[];
  repos: number;
  /** Every replica of every repo on every reachable node, plus one `*` row per unreachable node. */
  replicas: ReplicaReport[];
  /** The replicas whose status is not ok. */
  problems: ReplicaReport[];
}

function asEntry(state: ReplicaState): CatalogEntry | undefined {
  if (state.live) return { state: 'live', epoch: state.epoch, generation: state.generation };
  // A node that never knew the repo answers epoch 0; a tombstone has the epoch of its delete.
  return state.epoch > 0 ? { state: 'deleted', epoch: state.epoch, generation: state.generation } : undefined;
}

/** Names the refs (and HEAD) where `mine` differs from `reference`, a few of them. */
function refsDifference(mine: ReplicaState, reference: ReplicaState, limit = 3): string {
  const out: string[] = [];
  if ((mine.head ?? '') !== (reference.head ?? '')) out.push(`HEAD ${mine.head ?? '?'} (majority ${reference.head ?? '?'})`);
  const names = [...new Set([...Object.keys(mine.refs ?? {}), ...Object.keys(reference.refs ?? {})])].sort();
  const short = (oid: string | undefined): string => (oid === undefined ? 'absent' : oid.slice(0, 12));
  for (const ref of names) {
    const a = mine.refs?.[ref];
    const b = reference.refs?.[ref];
    if (a !== b) out.push(`${ref} ${short(a)} (majority ${short(b)})`);
  }
  if (out.length > limit) return `${out.slice(0, limit).join('; ')}; and ${out.length - limit} more`;
  return out.join('; ');
}

/**
 * The status of one repo's replicas on the reachable nodes. The newest state (planRead's rule) is the
 * reference: a replica missing it, or at an older version, is stale or missing; replicas at the newest
 * version are compared by refs digest, and those outside the largest group are divergent (all of them
 * when no group is largest: no side can be proven right). A replica a transaction holds is locked.
 */
export function classifyRepo(repoId: string, observations: readonly ReplicaObservation[]): ReplicaReport[] {
  const states = observations.filter((o): o is { node: NodeId; state: ReplicaState } => 'state' in o);
  const target = newestState(states.map((o) => asEntry(o.state)).filter((e): e is CatalogEntry => e !== undefined));
  const reports = new Map<NodeId, ReplicaReport>();
  const atNewest: { node: NodeId; state: ReplicaState }[] = [];
  for (const o of observations) {
    if ('error' in o) {
      reports.set(o.node, { repo_id: repoId, node: o.node, status: 'unreachable', detail: o.error });
      continue;
    }
    const { node, state } = o;
    const version = { epoch: state.epoch, generation: state.generation };
    const base = { repo_id: repoId, node, ...version };
    if (state.locked) {
      reports.set(node, { ...base, status: 'locked', detail: state.in_doubt ? 'a prepared transaction with no known outcome (in doubt) holds it' : 'a transaction holds it' });
    } else if (target === undefined) {
      reports.set(node, { ...base, status: 'ok' });
    } else if (target.state === 'deleted') {
      reports.set(node, state.live ? { ...base, status: 'stale', detail: `live, but deleted at epoch ${target.epoch}` } : { ...base, status: 'ok' });
    } else if (!state.live) {
      reports.set(node, { ...base, status: 'missing', detail: state.epoch > 0 ? `deleted at epoch ${state.epoch}, live at epoch ${target.epoch}` : 'not in its catalog' });
    } else if (compareVersions(version, target) < 0) {
      reports.set(node, { ...base, status: 'stale', detail: `at ${version.epoch}.${version.generation}, newest ${target.epoch}.${target.generation}` });
    } else {
      atNewest.push(o);
      reports.set(node, { ...base, status: 'ok' });
    }
  }
  const groups = new Map<string, { node: NodeId; state: ReplicaState }[]>();
  for (const o of atNewest) {
    const digest = o.state.digest ?? '';
    groups.set(digest, [...(groups.get(digest) ?? []), o]);
  }
  if (groups.size > 1) {
    const sorted = [...groups.values()].sort((a, b) => b.length - a.length);
    const majority = sorted[0]!.length > sorted[1]!.length ? sorted[0]! : undefined;
    for (const o of atNewest) {
      if (majority?.includes(o)) continue;
      const detail = majority ? refsDifference(o.state, majority[0]!.state) : `replicas at ${target!.epoch}.${target!.generation} hold ${groups.size} different ref sets, none a majority`;
      reports.set(o.node, { ...reports.get(o.node)!, status: 'divergent', detail });
    }
  }
  return observations.map((o) => reports.get(o.node)!);
}

/** Runs `task` over `items` with at most `limit` at once. */
async function eachLimited<T>(items: readonly T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next]!;
      next += 1;
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

export interface ClusterView {
  nodes: NodeReport[];
  infos: Map<NodeId, NodeInfo>;
}

/** Asks `seed` for the cluster's nodes, then every node about itself. Throws when the seed does not answer. */
export async function clusterView(client: PeerClient, seed: NodeId, timeoutMs: number): Promise<ClusterView> {
  let seedInfo: NodeInfo;
  try {
    seedInfo = await client.nodeInfo(seed, timeoutMs);
  } catch (err) {
    throw new Error(`cannot reach ${seed}: ${(err as Error).message}`, { cause: err });
  }
  const infos = new Map<NodeId, NodeInfo>([[seed, seedInfo]]);
  // The seed lists itself under its own configured URL, which may be spelled differently from --node.
  const urls = [seed, ...seedInfo.nodes.filter((u) => u !== seedInfo.url && u !== seed)];
  const nodes = await Promise.all(
    urls.map(async (url): Promise<NodeReport> => {
      try {
        const info = infos.get(url) ?? (await client.nodeInfo(url, timeoutMs));
        infos.set(url, info);
        return { url, reachable: true, server_id: info.server_id };
      } catch (err) {
        return { url, reachable: false, error: (err as Error).message };
      }
    }),
  );
  return { nodes, infos };
}

export async function runVerify(
  client: PeerClient,
  seed: NodeId,
  options: { timeoutMs: number; concurrency?: number; onProgress?: (checked: number, total: number) => void },
): Promise<VerifyReport> {
  const { nodes } = await clusterView(client, seed, options.timeoutMs);
  const catalogs = new Map<NodeId, Record<string, CatalogEntry>>();
  await Promise.all(
    nodes
      .filter((n) => n.reachable)
      .map(async (n) => {
        try {
          catalogs.set(n.url, await client.readCatalog(n.url, options.timeoutMs));
        } catch (err) {
          n.reachable = false;
          n.error = (err as Error).message;
        }
      }),
  );
  const reachable = nodes.filter((n) => n.reachable).map((n) => n.url);
  const repoIds = [...new Set([...catalogs.values()].flatMap((c) => Object.keys(c)))].sort();
  const byRepo = new Map<string, ReplicaReport[]>();
  options.onProgress?.(0, repoIds.length);
  await eachLimited(repoIds, options.concurrency ?? 4, async (repoId) => {
    const observations = await Promise.all(
      reachable.map(async (node): Promise<ReplicaObservation> => {
        try {
          return { node, state: (await client.repoState(node, repoId, { refs: true }, options.timeoutMs)) as ReplicaState };
        } catch (err) {
          return { node, error: (err as Error).message };
        }
      }),
    );
    byRepo.set(repoId, classifyRepo(repoId, observations));
    options.onProgress?.(byRepo.size, repoIds.length);
  });
  const replicas: ReplicaReport[] = [
    ...nodes.filter((n) => !n.reachable).map((n): ReplicaReport => ({ repo_id: '*', node: n.url, status: 'unreachable', ...(n.error ? { detail: n.error } : {}) })),
    ...repoIds.flatMap((id) => byRepo.get(id) ?? []),
  ];
  const problems = replicas.filter((r) => r.status !== 'ok');
  return { ok: problems.length === 0, nodes, repos: repoIds.length, replicas, problems };
}

/** Columns padded to their widest cell. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export function formatVerify(report: VerifyReport): string {
  const reachable = report.nodes.filter((n) => n.reachable).length;
  const summary = `nodes: ${report.nodes.length} (${reachable} reachable), repos: ${report.repos}, replicas checked: ${report.replicas.filter((r) => r.repo_id !== '*').length}`;
  if (report.ok) return `${summary}\nverify: every replica agrees`;
  const rows = report.problems.map((p) => [p.repo_id, p.node, p.status, p.epoch === undefined ? '-' : `${p.epoch}.${p.generation}`, p.detail ?? '']);
  return `${summary}\n${formatTable(['REPO', 'NODE', 'STATUS', 'VERSION', 'DETAIL'], rows)}\nverify: ${report.problems.length} replica(s) do not agree`;
}
