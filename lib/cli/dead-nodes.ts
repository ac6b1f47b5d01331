import type { PeerClient } from '../cluster/peer-client.js';
import type { NodeId } from '../core/txn-core.js';
import { clusterView, formatTable } from './verify.js';

// `quorum-git node declare-dead` and `node readmit` (README "A node lost for good"): the operator
// tells every other node that a node is dead for good, or that it may come back. Declared dead, a node
// is fenced (its peers answer none of its messages) and its votes and acceptances are void, so the
// live nodes settle the transactions whose outcome rested on it (lib/core/txn-core.ts, the rules at
// the top). It may come back only with an empty data dir, once readmitted.

export interface MembershipReport {
  /** Every node other than the target recorded the change. */
  ok: boolean;
  target: NodeId;
  dead: boolean;
  /** Why nothing was sent (the target answers, or is not empty for a readmission), if so. */
  refused?: string;
  nodes: { url: NodeId; recorded: boolean; dead_nodes?: NodeId[]; error?: string }[];
}

/**
 * Declares `target` dead (or readmits it) on every other node of the cluster `seed` belongs to.
 * Refused before anything is sent when the target is not a node of the cluster; when declaring, if the
 * target still answers (it is not dead: stop it first); when readmitting, unless it answers with an
 * empty data dir (no repos, no transactions: whatever it held was declared void).
 */
export async function runMembership(client: PeerClient, seed: NodeId, target: NodeId, dead: boolean, options: { timeoutMs: number }): Promise<MembershipReport> {
  const { nodes, infos } = await clusterView(client, seed, options.timeoutMs);
  const base = { ok: false, target, dead, nodes: [] };
  const known = nodes.find((n) => n.url === target);
  if (!known) return { ...base, refused: `${target} is not a node of this cluster (${nodes.map((n) => n.url).join(', ')})` };
  const info = infos.get(target);
  if (dead && known.reachable) return { ...base, refused: `${target} answers: it is not dead. Stop it (and keep it stopped) before declaring it dead` };
  if (!dead) {
    if (!known.reachable || !info) return { ...base, refused: `${target} does not answer: start it on an empty data dir first` };
    if (!info.empty) return { ...base, refused: `${target} is not empty (${info.repos} repos): start it on an empty data dir before readmitting it` };
  }
  const others = nodes.filter((n) => n.url !== target);
  const results = await Promise.all(
    others.map(async (n) => {
      try {
        const answer = await client.setMembership(n.url, target, dead, options.timeoutMs);
        return { url: n.url, recorded: true, dead_nodes: answer.dead };
      } catch (err) {
        return { url: n.url, recorded: false, error: (err as Error).message };
      }
    }),
  );
  return { ok: results.every((r) => r.recorded), target, dead, nodes: results };
}

export function formatMembership(report: MembershipReport): string {
  const what = report.dead ? 'declared dead' : 'readmitted';
  if (report.refused !== undefined) return `nothing sent: ${report.refused}`;
  const rows = report.nodes.map((n) => [n.url, n.recorded ? 'recorded' : 'NOT RECORDED', (n.dead_nodes ?? []).join(' '), n.error ?? '']);
  const missing = report.nodes.filter((n) => !n.recorded).length;
  const verdict =
    missing === 0
      ? `${report.target} ${what} on every other node`
      : `${report.target} ${what} on ${report.nodes.length - missing} of ${report.nodes.length} nodes: run the command again once the others answer`;
  return `${formatTable(['NODE', 'RESULT', 'DEAD_NODES', 'ERROR'], rows)}\n${verdict}`;
}
