import { promises as dns } from 'node:dns';
import type { Socket } from 'node:net';
import type { Clock } from '../base/clock.js';
import type { Logger } from '../base/logger.js';

// A cap on the connections one client address holds open at once (MAX_CONNECTIONS_PER_CLIENT), as
// nginx's limit_conn: a connection beyond it is closed as it is accepted, before any HTTP is parsed.
// The per-client cap on git processes (lib/http/git-rpc.ts GitSlots) answers each request beyond it
// with a 503, but every such answer costs the node about 1 ms on the bench machine (a bare Node HTTP
// server spends 0.5 to 0.8 ms on each of 300 such requests): 300 slow clients arriving at once kept
// /health waiting 130-210 ms. Closing the surplus connections at accept costs almost nothing.
//
// The cluster's own addresses are never capped: the peers (their URLs' hosts, resolved at start and
// again every EXEMPT_REFRESH_MS: a peer's name may not resolve yet when a node starts, as a
// StatefulSet's pods get their DNS records only once ready, and addresses change) carry every
// client's proxied request and the protocol's messages, and loopback carries the pre-receive hook and
// the operator's tools. Nor are the load balancers of TRUSTED_PROXIES, which carry every client's
// connections; behind a load balancer not listed there, every client has its address: list it, raise
// the cap, or set it to 0 (off).

/** How often the peers' names are resolved again for the exemption. */
export const EXEMPT_REFRESH_MS = 30_000;

/** An address as sockets report it, IPv4-mapped IPv6 as plain IPv4: `::ffff:10.0.0.1`, and `::ffff:a00:1` as URLs write it. */
export function plainAddress(address: string | undefined): string {
  if (address === undefined) return '';
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice('::ffff:'.length);
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (!hex) return address;
  const [hi, lo] = [parseInt(hex[1]!, 16), parseInt(hex[2]!, 16)];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** The addresses never capped: loopback's own (hook, tools) and every address the peers' hosts resolve to. */
export async function clusterAddresses(peerUrls: readonly string[]): Promise<Set<string>> {
  const addresses = new Set(['127.0.0.1', '::1']);
  for (const url of peerUrls) {
    const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
    try {
      for (const { address } of await dns.lookup(host, { all: true })) addresses.add(plainAddress(address));
    } catch {
      // A peer's name that does not resolve now cannot connect from it either.
    }
  }
  return addresses;
}

export class ConnectionCap {
  private readonly open = new Map<string, number>();
  private readonly refusedSinceLog = new Map<string, number>();
  private lastLogMs = -Infinity;
  private exempt: ReadonlySet<string> = new Set(['127.0.0.1', '::1']);

  constructor(
    private readonly maxPerClient: number,
    private readonly logger: Logger,
    private readonly clock: Clock,
    /** TRUSTED_PROXIES: a load balancer carries many clients' connections, so it is never capped either. */
    private readonly trustedProxy: (address: string) => boolean = () => false,
  ) {}

  /** The addresses never capped from now on (clusterAddresses); connections already open keep their count. */
  setExempt(addresses: ReadonlySet<string>): void {
    this.exempt = addresses;
  }

  /** Counts a new connection, or closes it at once when its address already holds the cap. */
  admit(socket: Socket): void {
    if (this.maxPerClient <= 0) return;
    const address = plainAddress(socket.remoteAddress);
    if (this.exempt.has(address) || this.trustedProxy(address)) return;
    const held = this.open.get(address) ?? 0;
    if (held >= this.maxPerClient) {
      socket.destroy();
      this.noteRefused(address);
      return;
    }
    this.open.set(address, held + 1);
    socket.once('close', () => {
      const left = (this.open.get(address) ?? 1) - 1;
      if (left <= 0) this.open.delete(address);
      else this.open.set(address, left);
    });
  }

  /** One log line per 10 s at most, with how many were closed from each address: a flood must not flood the log. */
  private noteRefused(address: string): void {
    this.refusedSinceLog.set(address, (this.refusedSinceLog.get(address) ?? 0) + 1);
    const now = this.clock.now();
    if (now - this.lastLogMs < 10_000) return;
    this.lastLogMs = now;
    this.logger.warn('connections closed: too many open from one address', { max_per_client: this.maxPerClient, closed: Object.fromEntries(this.refusedSinceLog) });
    this.refusedSinceLog.clear();
  }
}
