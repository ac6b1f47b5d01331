import net from 'node:net';

// A fault-injecting TCP relay in front of one node, on loopback. Every peer reaches the node through it
// (the node's PUBLIC_URL and the other nodes' PEER_URLS name the relay), so one URL per node stays its
// identity in the protocol. `cut()` drops every open connection and refuses new ones until `heal()`:
// the node can no longer be reached by its peers (nor by a proxied push), while its own outgoing
// requests still get through, as in an asymmetric partition. Clients talk to the node's own port.

export class Relay {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private blocked = false;
  port = 0;

  constructor(private readonly targetPort: number, private readonly host = '127.0.0.1') {
    this.server = net.createServer((client) => this.accept(client));
  }

  async listen(port: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, this.host, () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  get isCut(): boolean {
    return this.blocked;
  }

  cut(): void {
    this.blocked = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  heal(): void {
    this.blocked = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    if (this.blocked) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, this.host);
    this.sockets.add(client);
    this.sockets.add(upstream);
    const done = (): void => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
  }
}
