import type { Clock } from '../base/clock.js';
import type { NodeId } from '../core/txn-core.js';
import type { PeerClient } from './peer-client.js';

// Which peers are up, by heartbeat: each round pings every peer and records whether it answered.
// Reads route around peers believed down, pushes go to a live coordinator (liveNodes), and readiness
// counts the reachable ones. A belief, not a fact: the protocol never rests on it (a prepare to a
// "reachable" peer can still fail, and a proxy that finds a peer down marks it so at once).

export interface PeerStatus {
  url: string;
  server_id: string | null;
  reachable: boolean;
  last_seen: string | null;
}

export interface MembershipOptions {
  self: NodeId;
  peers: readonly NodeId[];
  client: Pick<PeerClient, 'ping'>;
  heartbeatIntervalMs: number;
  clock: Clock;
  /** Records one ping (the node's metrics). */
  observe: (peer: NodeId, answered: boolean, seconds: number) => void;
}

export class Membership {
  private readonly options: MembershipOptions;
  private readonly peers = new Map<NodeId, PeerStatus>();

  constructor(options: MembershipOptions) {
    this.options = options;
    for (const url of options.peers) this.peers.set(url, { url, server_id: null, reachable: false, last_seen: null });
  }

  /** Every peer's status, as last seen (the objects themselves: forward() marks a refused peer down). */
  values(): IterableIterator<PeerStatus> {
    return this.peers.values();
  }

  get(url: NodeId): PeerStatus | undefined {
    return this.peers.get(url);
  }

  async heartbeat(): Promise<void> {
    const { client, clock, heartbeatIntervalMs, observe } = this.options;
    await Promise.all(
      [...this.peers.values()].map(async (peer) => {
        const started = clock.now();
        try {
          const info = await client.ping(peer.url, Math.min(heartbeatIntervalMs, 1000));
          observe(peer.url, true, (clock.now() - started) / 1000);
          peer.server_id = info.server_id;
          peer.reachable = true;
          peer.last_seen = new Date(clock.now()).toISOString();
        } catch {
          observe(peer.url, false, 0);
          peer.reachable = false;
        }
      }),
    );
  }

  /** The nodes believed up (by heartbeat), ourselves included. */
  liveNodes(): NodeId[] {
    return [this.options.self, ...[...this.peers.values()].filter((p) => p.reachable).map((p) => p.url)];
  }

  /** Nodes reachable by heartbeat, this one included. */
  reachableCount(): number {
    return 1 + [...this.peers.values()].filter((p) => p.reachable).length;
  }
}
