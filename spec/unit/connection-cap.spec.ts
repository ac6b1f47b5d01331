import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { expect } from 'chai';
import { ConnectionCap, clusterAddresses, plainAddress } from '../../lib/http/connection-cap.js';
import type { Logger } from '../../lib/base/logger.js';
import { systemClock } from '../../lib/base/clock.js';

// The per-address connection cap (MAX_CONNECTIONS_PER_CLIENT) as bookkeeping: what it closes, what it
// counts, what it never touches. hostile-input.spec runs it on a real node.

class FakeSocket extends EventEmitter {
  destroyed = false;
  constructor(readonly remoteAddress: string) {
    super();
  }
  destroy(): void {
    this.destroyed = true;
    this.emit('close');
  }
}

const warnings: unknown[] = [];
const logger = { warn: (_m: string, meta?: unknown) => warnings.push(meta), info: () => undefined, error: () => undefined, debug: () => undefined, child: () => logger } as unknown as Logger;

function connect(cap: ConnectionCap, address: string): FakeSocket {
  const socket = new FakeSocket(address);
  cap.admit(socket as unknown as Socket);
  return socket;
}

describe('connection cap per client address', () => {
  it('closes a connection beyond the cap as it comes, and takes the address again once one of its own closes', () => {
    const cap = new ConnectionCap(2, logger, systemClock);
    const [a, b] = [connect(cap, '10.0.0.9'), connect(cap, '::ffff:10.0.0.9')];
    expect([a.destroyed, b.destroyed]).to.deep.equal([false, false]);
    expect(connect(cap, '10.0.0.9').destroyed, 'the third (IPv4-mapped counts as the same address)').to.equal(true);
    expect(connect(cap, '10.0.0.8').destroyed, 'another address').to.equal(false);
    a.destroy();
    expect(connect(cap, '10.0.0.9').destroyed).to.equal(false);
    expect(warnings.length, 'a refusal is logged (at most once per 10 s)').to.equal(1);
  });

  it('never caps loopback (the hook, the tools) nor the addresses it is told are the peers\', and caps nothing at 0', () => {
    const cap = new ConnectionCap(1, logger, systemClock);
    for (let i = 0; i < 5; i += 1) expect(connect(cap, '127.0.0.1').destroyed).to.equal(false);
    connect(cap, '10.0.0.2');
    expect(connect(cap, '10.0.0.2').destroyed).to.equal(true);
    cap.setExempt(new Set(['127.0.0.1', '::1', '10.0.0.2']));
    expect(connect(cap, '10.0.0.2').destroyed).to.equal(false);
    const off = new ConnectionCap(0, logger, systemClock);
    for (let i = 0; i < 5; i += 1) expect(connect(off, '10.0.0.3').destroyed).to.equal(false);
  });

  it('never caps a load balancer of TRUSTED_PROXIES: it carries every client\'s connections', () => {
    const cap = new ConnectionCap(1, logger, systemClock, (address) => address === '192.0.2.1');
    for (let i = 0; i < 5; i += 1) expect(connect(cap, '::ffff:192.0.2.1').destroyed).to.equal(false);
    connect(cap, '192.0.2.2');
    expect(connect(cap, '192.0.2.2').destroyed).to.equal(true);
  });

  it('resolves the peers\' hosts, skipping one that does not resolve (yet): it is tried again later', async () => {
    const addresses = await clusterAddresses(['http://localhost:7001', 'http://10.1.2.3:7002', 'http://[::ffff:10.1.2.4]:7003', 'http://no-such-host.invalid:7004']);
    expect([...addresses]).to.include.members(['127.0.0.1', '::1', '10.1.2.3', '10.1.2.4']);
    expect(plainAddress('::ffff:10.1.2.4')).to.equal('10.1.2.4');
    expect(plainAddress('::ffff:a01:204')).to.equal('10.1.2.4');
    expect(plainAddress('::1')).to.equal('::1');
  });
});
