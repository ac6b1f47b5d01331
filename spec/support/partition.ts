import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Cluster, freePorts, type TestNode } from './cluster.js';

// Partitions of a real cluster on loopback. Every node is reached by its peers only through a TCP
// relay in front of it (its PUBLIC_URL and the other nodes' PEER_URLS name the relay, so one URL per
// node stays its identity), and every node's own outgoing HTTP connections come from a loopback
// address of its own (source-address-preload.ts), so a relay can tell which peer a connection comes
// from. Cutting the link a-b makes b's relay refuse a's connections and a's relay refuse b's, in both
// directions; clients (the spec's git and HTTP calls) still talk to each node's own port.
//
// What a cut does not stop: git processes a node starts (catch-up fetches) connect from 127.0.0.1 and
// pass every relay. A node only starts one after a peer answered its repo-state request, which the
// cut stops, so a cut-off node starts none towards the other side.

const PRELOAD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'source-address-preload.js');

/** The loopback address node `index` connects from (127.0.0.1 stays the spec's own). */
export function sourceAddressOf(index: number): string {
  return `127.0.0.${11 + index}`;
}

/** A TCP relay in front of one node that refuses connections from the source addresses it is told to. */
export class LinkRelay {
  private readonly server: net.Server;
  private readonly sockets = new Map<net.Socket, string>();
  private readonly blocked = new Set<string>();
  port = 0;

  constructor(private readonly targetPort: number) {
    this.server = net.createServer((client) => this.accept(client));
  }

  async listen(port = 0): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Refuses new connections from `source` and drops the open ones (keep-alive sockets included). */
  block(source: string): void {
    this.blocked.add(source);
    for (const [socket, from] of this.sockets) if (from === source) socket.destroy();
  }

  unblock(source: string): void {
    this.blocked.delete(source);
  }

  unblockAll(): void {
    this.blocked.clear();
  }

  async close(): Promise<void> {
    for (const socket of this.sockets.keys()) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    const from = client.remoteAddress?.replace(/^::ffff:/, '') ?? '';
    if (this.blocked.has(from)) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    this.sockets.set(client, from);
    const done = (): void => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
  }
}

/** A cluster whose nodes reach each other only through LinkRelays; links can be cut and healed. */
export class PartitionedCluster {
  private constructor(
    readonly cluster: Cluster,
    readonly relays: LinkRelay[],
  ) {}

  /** A started cluster of `size` nodes behind relays (`env` on top of the spec defaults). */
  static async create(size: number, env: Record<string, string> = {}): Promise<PartitionedCluster> {
    const cluster = await Cluster.create(size, { env, start: false });
    const relays: LinkRelay[] = [];
    try {
      const ports = await freePorts(size);
      for (const [i, node] of cluster.nodes.entries()) {
        const relay = new LinkRelay(node.port);
        await relay.listen(ports[i]!);
        relays.push(relay);
      }
      for (const [i, node] of cluster.nodes.entries()) {
        node.env.PUBLIC_URL = relays[i]!.url;
        node.env.PEER_URLS = relays.filter((_, j) => j !== i).map((r) => r.url).join(',');
        node.env.SPEC_SOURCE_ADDRESS = sourceAddressOf(i);
        node.env.NODE_OPTIONS = [process.env.NODE_OPTIONS ?? '', `--import=${PRELOAD}`].join(' ').trim();
      }
      await cluster.heal();
    } catch (err) {
      await Promise.all([cluster.destroy(), ...relays.map((r) => r.close())]);
      throw err;
    }
    return new PartitionedCluster(cluster, relays);
  }

  /** The URL every node knows `node` by (its relay): the identity routing and the protocol use. */
  identityOf(node: TestNode): string {
    return this.relays[node.index]!.url;
  }

  /** Cuts the link between a and b, both ways. */
  cut(a: TestNode, b: TestNode): void {
    this.relays[b.index]!.block(sourceAddressOf(a.index));
    this.relays[a.index]!.block(sourceAddressOf(b.index));
  }

  /** Cuts every link of `node`: it is alone on its side. */
  isolate(node: TestNode): void {
    for (const other of this.cluster.nodes) if (other !== node) this.cut(node, other);
  }

  /** Every link up again. */
  healLinks(): void {
    for (const relay of this.relays) relay.unblockAll();
  }

  async destroy(): Promise<void> {
    await Promise.all([this.cluster.destroy(), ...this.relays.map((r) => r.close())]);
  }
}
