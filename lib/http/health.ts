import os from 'node:os';
import type { Clock } from '../base/clock.js';
import type { NotConverging } from '../cluster/catch-up.js';
import type { PeerStatus } from '../cluster/membership.js';

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

// GET /health: how this node is (its peers by heartbeat, its load, its replicas not converging),
// for operators and `quorum-git status`.

export interface HealthOptions {
  serverId: string;
  url: string;
  quorum: number;
  clock: Clock;
  peers: () => Iterable<PeerStatus>;
  liveRepos: () => number;
  /** Replicas here whose catch-up or repair failed several rounds in a row (lib/cluster/catch-up.ts). */
  notConverging: () => NotConverging[];
}

export class Health {
  private readonly options: HealthOptions;
  private cpuSample = os.cpus().map((c) => c.times);
  private cpuPercent = 0;

  constructor(options: HealthOptions) {
    this.options = options;
  }

  /** Called every second by the node: the CPU load /health shows is that of the last second. */
  sampleCpu(): void {
    const now = os.cpus().map((c) => c.times);
    let busy = 0;
    let total = 0;
    now.forEach((t, i) => {
      const before = this.cpuSample[i];
      if (!before) return;
      const idle = t.idle - before.idle;
      const all = t.user + t.nice + t.sys + t.irq + t.idle - (before.user + before.nice + before.sys + before.irq + before.idle);
      busy += all - idle;
      total += all;
    });
    this.cpuSample = now;
    if (total > 0) this.cpuPercent = Math.round((busy / total) * 1000) / 10;
  }

  report(): Record<string, unknown> {
    const { serverId, url, quorum, clock } = this.options;
    const peers = [...this.options.peers()];
    return {
      status: 'ok',
      server_id: serverId,
      url,
      timestamp: new Date(clock.now()).toISOString(),
      load: { cpu: this.cpuPercent, memory: Math.round((1 - os.freemem() / os.totalmem()) * 1000) / 10 },
      peers: peers.length,
      peers_reachable: peers.filter((p) => p.reachable).length,
      peer_status: peers,
      quorum,
      repos: this.options.liveRepos(),
      // Replicas here whose catch-up or repair failed several rounds in a row (lib/cluster/catch-up.ts).
      replicas_not_converging: this.options.notConverging(),
    };
  }
}
