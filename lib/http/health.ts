// Liveness and readiness for load balancers and orchestrators (GET /health/live, /health/ready).
// Live: the process answers. Ready: it can do its job, which for a node means that its first
// recovery round since start has run (transactions left in doubt by a crash are settled, the
// catalog synced) and that it reaches a write quorum of nodes, itself included. A node that is not
// ready still serves what it can (reads proxied, writes refused with a clear error); readiness only
// tells a balancer to prefer other nodes.

export interface ReadinessInput {
  /** The first recovery round (in-doubt resolution, catalog sync) since start has run. */
  recovered: boolean;
  /** Nodes reachable by heartbeat, this one included. */
  nodesReachable: number;
  nodes: number;
  /** The write quorum W. */
  quorum: number;
}

export interface Readiness {
  ready: boolean;
  /** Why not, one sentence each; empty when ready. */
  reasons: string[];
}

export function readiness(input: ReadinessInput): Readiness {
  const reasons: string[] = [];
  if (!input.recovered) reasons.push('recovery since start has not finished (transactions in doubt, catalog sync)');
  if (input.nodesReachable < input.quorum) {
    reasons.push(`${input.nodesReachable} of ${input.nodes} nodes reachable, a write quorum needs ${input.quorum}`);
  }
  return { ready: reasons.length === 0, reasons };
}
