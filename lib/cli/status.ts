import type { PeerClient } from '../cluster/peer-client.js';
import type { NodeId } from '../core/txn-core.js';
import { clusterView, formatTable } from './verify.js';

// `quorum-git status`: every node's reachability, identity, recovery state, repos and in-doubt
// transactions, from GET /internal/node on each node the seed lists.

export interface NodeStatus {
  url: NodeId;
  reachable: boolean;
  server_id?: string;
  /** Its first recovery round since start (in-doubt resolution, catalog sync) has run. */
  recovered?: boolean;
  repos?: number;
  in_doubt?: number;
  /** The nodes it holds declared dead for good (`quorum-git node declare-dead`). */
  dead?: string[];
  error?: string;
}

export interface StatusReport {
  /** Every node answered. */
  ok: boolean;
  nodes: NodeStatus[];
}

export async function runStatus(client: PeerClient, seed: NodeId, options: { timeoutMs: number }): Promise<StatusReport> {
  const { nodes, infos } = await clusterView(client, seed, options.timeoutMs);
  const out = nodes.map((n): NodeStatus => {
    const info = infos.get(n.url);
    if (!n.reachable || !info) return { url: n.url, reachable: false, ...(n.error ? { error: n.error } : {}) };
    return { url: n.url, reachable: true, server_id: info.server_id, recovered: info.recovered, repos: info.repos, in_doubt: info.in_doubt, dead: info.dead ?? [] };
  });
  return { ok: out.every((n) => n.reachable), nodes: out };
}

export function formatStatus(report: StatusReport): string {
  const rows = report.nodes.map((n) =>
    n.reachable
      ? [n.url, n.server_id ?? '', 'reachable', n.recovered ? 'recovered' : 'recovering', String(n.repos ?? ''), String(n.in_doubt ?? ''), (n.dead ?? []).join(' ')]
      : [n.url, '-', 'UNREACHABLE', '-', '-', '-', '-', n.error ?? ''],
  );
  const down = report.nodes.filter((n) => !n.reachable).length;
  const verdict = down === 0 ? 'status: every node is reachable' : `status: ${down} of ${report.nodes.length} node(s) unreachable`;
  return `${formatTable(['NODE', 'SERVER_ID', 'STATE', 'RECOVERY', 'REPOS', 'IN_DOUBT', 'DECLARED_DEAD', 'ERROR'], rows)}\n${verdict}`;
}
