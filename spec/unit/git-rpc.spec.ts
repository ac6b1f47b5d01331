import { expect } from 'chai';
import { ManualClock } from '../support/manual-clock.js';
import { GitSlots, RequestHeadScanner, type GitSlot, type GitSlotRefusal, bodyDecoding, clientAddress, trustedProxyCheck } from '../../lib/http/git-rpc.js';
import { parseTrustedProxies } from '../../lib/base/config.js';

// The request-head check in front of git's RPCs (issue 8 items 1-3): pkt-line framing, the first
// command, caps; and the bookkeeping of git slots.

const OID_A = 'a'.repeat(40);
const OID_B = 'b'.repeat(40);

function pkt(line: string): string {
  return (4 + Buffer.byteLength(line)).toString(16).padStart(4, '0') + line;
}

/** Feeds `body` split into `size`-byte chunks; returns the last verdict. */
function scan(service: 'upload-pack' | 'receive-pack', body: string | Buffer, size = 7, maxHeadBytes = 1 << 20): ReturnType<RequestHeadScanner['feed']> {
  const scanner = new RequestHeadScanner(service, maxHeadBytes);
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body, 'latin1');
  let verdict = scanner.state;
  for (let at = 0; at < bytes.length && verdict.state === 'more'; at += size) verdict = scanner.feed(bytes.subarray(at, at + size));
  return verdict;
}

describe('RequestHeadScanner', function () {
  it('accepts a push head (commands, flush) in chunks of any size, and ignores the pack after it', function () {
    const body = pkt(`${OID_A} ${OID_B} refs/heads/main\0report-status side-band-64k\n`) + pkt(`${'0'.repeat(40)} ${OID_B} refs/notes/x\n`) + '0000PACK\x00\x00\x00\x02junk';
    for (const size of [1, 3, 4, 5, 64, 4096]) expect(scan('receive-pack', body, size), `chunks of ${size}`).to.deep.equal({ state: 'done' });
  });

  it("counts a push's commands (one per ref), however the head is cut, and not the pack after it", function () {
    const body = pkt(`${OID_A} ${OID_B} refs/heads/main\0report-status\n`) + [1, 2].map((i) => pkt(`${'0'.repeat(40)} ${OID_B} refs/heads/b${i}\n`)).join('') + '0000' + pkt('PACK-like');
    for (const size of [1, 5, 4096]) {
      const scanner = new RequestHeadScanner('receive-pack', 1 << 20);
      const bytes = Buffer.from(body, 'latin1');
      for (let at = 0; at < bytes.length && scanner.state.state === 'more'; at += size) scanner.feed(bytes.subarray(at, at + size));
      expect(scanner.commands, `chunks of ${size}`).to.equal(3);
    }
  });

  it('accepts upload-pack v0 wants and a protocol v2 command with its delim-pkt', function () {
    expect(scan('upload-pack', pkt(`want ${OID_A} multi_ack\n`) + '0000' + pkt('done\n'))).to.deep.equal({ state: 'done' });
    expect(scan('upload-pack', pkt('command=fetch\n') + pkt('agent=git/2.39\n') + '0001' + pkt(`want ${OID_A}\n`) + '0000')).to.deep.equal({ state: 'done' });
  });

  it('refuses 64 KB of "a" at its first pkt-line, having looked at no more than that line', function () {
    const scanner = new RequestHeadScanner('receive-pack', 1 << 20);
    // 'aaaa' is a valid length (43690): the verdict comes once the first line's prefix is in.
    const verdict = scanner.feed(Buffer.alloc(64 * 1024, 'a'));
    expect(verdict.state).to.equal('invalid');
  });

  it('refuses bytes that are not pkt-lines, bad lengths, and a delim-pkt before any command', function () {
    expect(scan('upload-pack', 'GET / HTTP/1.1\r\n').state).to.equal('invalid');
    expect(scan('upload-pack', '0003').state).to.equal('invalid');
    expect(scan('upload-pack', 'fff1' + 'x'.repeat(10)).state).to.equal('invalid');
    expect(scan('upload-pack', '0001' + pkt('command=fetch\n')).state).to.equal('invalid');
  });

  it('refuses a first line the service would not start with', function () {
    expect(scan('receive-pack', pkt(`want ${OID_A}\n`) + '0000').state).to.equal('invalid');
    expect(scan('upload-pack', pkt(`${OID_A} ${OID_B} refs/heads/main\n`) + '0000').state).to.equal('invalid');
  });

  it('refuses a head longer than its cap', function () {
    const line = pkt(`${OID_A} ${OID_B} refs/heads/main\n`);
    const verdict = scan('receive-pack', line.repeat(100) + '0000', 64, 50 * line.length);
    expect(verdict).to.deep.equal({ state: 'invalid', message: `the request head exceeds ${50 * line.length} bytes` });
  });

  it('says more while the head is incomplete, and a bare flush is a complete (empty) head', function () {
    expect(scan('receive-pack', pkt(`${OID_A} ${OID_B} refs/heads/main\n`)).state).to.equal('more');
    expect(scan('receive-pack', '0000')).to.deep.equal({ state: 'done' });
  });
});

describe('bodyDecoding', function () {
  it('maps content-encodings to decoders; unknown ones to undefined', function () {
    expect([undefined, '', 'identity', 'gzip', 'x-gzip', ' Deflate ', 'br', 'gzip, gzip'].map(bodyDecoding)).to.deep.equal([
      'identity',
      'identity',
      'identity',
      'gzip',
      'gzip',
      'deflate',
      undefined,
      undefined,
    ]);
  });
});

describe('clientAddress', function () {
  it('trusts only the last x-forwarded-for entry, and only from a peer', function () {
    expect(clientAddress('127.0.0.1', '6.6.6.6, 10.0.0.7', true)).to.equal('10.0.0.7');
    expect(clientAddress('192.0.2.1', '10.0.0.7', false)).to.equal('192.0.2.1');
    expect(clientAddress('127.0.0.1', undefined, true)).to.equal('127.0.0.1');
  });

  // Behind a load balancer every client came from its address, so the per-client caps charged all of
  // them to one client: TRUSTED_PROXIES names the balancers whose x-forwarded-for is believed.
  it('reads x-forwarded-for from its end while the hop that wrote each entry is a trusted proxy (TRUSTED_PROXIES)', function () {
    const trusted = trustedProxyCheck(parseTrustedProxies('192.0.2.0/24, 198.51.100.7 2001:db8::/32'));
    // A balancer in the list: the client it saw.
    expect(clientAddress('192.0.2.1', '203.0.113.5', false, trusted)).to.equal('203.0.113.5');
    // What the client wrote itself (left of the balancer's entry) is never believed.
    expect(clientAddress('192.0.2.1', '6.6.6.6, 203.0.113.5', false, trusted)).to.equal('203.0.113.5');
    // Two balancers in a row, one as an IPv4-mapped socket address, one in a second header line.
    expect(clientAddress('::ffff:198.51.100.7', ['6.6.6.6, 203.0.113.5', '192.0.2.9'], false, trusted)).to.equal('203.0.113.5');
    expect(clientAddress('2001:db8::1', '203.0.113.5', false, trusted)).to.equal('203.0.113.5');
    // A peer proxying a request that came through a balancer: the peer's entry names the balancer.
    expect(clientAddress('127.0.0.1', '6.6.6.6, 203.0.113.5, 192.0.2.1', true, trusted)).to.equal('203.0.113.5');
    // Only trusted hops all the way: the leftmost entry; an empty entry stops at the last believed one.
    expect(clientAddress('192.0.2.1', '192.0.2.5', false, trusted)).to.equal('192.0.2.5');
    expect(clientAddress('192.0.2.1', ', 192.0.2.5', false, trusted)).to.equal('192.0.2.5');
    // A client not in the list cannot pick the address it is charged to.
    expect(clientAddress('203.0.113.9', '192.0.2.1', false, trusted)).to.equal('203.0.113.9');
    expect(clientAddress('198.51.100.8', '203.0.113.5', false, trusted)).to.equal('198.51.100.8');
    expect(clientAddress('2001:db9::1', '203.0.113.5', false, trusted)).to.equal('2001:db9::1');
  });

  it('stops the node at start on a TRUSTED_PROXIES entry that is not an address or CIDR range', function () {
    expect(parseTrustedProxies(undefined)).to.deep.equal([]);
    expect(parseTrustedProxies(' 10.0.0.0/8,::1 ')).to.deep.equal([
      { address: '10.0.0.0', prefix: 8, family: 'ipv4' },
      { address: '::1', prefix: 128, family: 'ipv6' },
    ]);
    for (const bad of ['lb.example.com', '10.0.0.0/33', '10.0.0.0/', '10.0.0.0/8/8', '::/129', '10.0.0.0/-1', '10.0.0.0/1e1']) {
      expect(() => parseTrustedProxies(bad), bad).to.throw(/^TRUSTED_PROXIES: '.*' is not an IP address or CIDR range/);
    }
    expect(trustedProxyCheck([])('10.0.0.1')).to.equal(false);
  });
});

describe('GitSlots', function () {
  it('refuses beyond the per-client and per-node caps, and a release (idempotent) frees the slot', function () {
    const slots = new GitSlots(3, 2);
    const a1 = slots.take('a');
    const a2 = slots.take('a');
    expect(slots.take('a')).to.deep.equal({ refused: 'client' });
    const b1 = slots.take('b');
    expect(slots.take('c')).to.deep.equal({ refused: 'node' });
    if ('refused' in a1 || 'refused' in a2 || 'refused' in b1) throw new Error('expected slots');
    a1.release();
    a1.release();
    expect(slots.inUse).to.equal(2);
    expect('release' in slots.take('c')).to.equal(true);
    expect(slots.take('a')).to.deep.equal({ refused: 'node' });
  });

  it('queues an RPC beyond a cap up to its wait, serves the queue in arrival order as slots free, and bounds it', async function () {
    const clock = new ManualClock(0);
    const slots = new GitSlots(3, 2, { waitMs: 1000, clock });
    const held = ['a', 'a', 'b'].map((c) => slots.take(c));
    const [a1, a2, b1] = held.map((h) => {
      if ('refused' in h) throw new Error('expected a slot');
      return h;
    }) as [GitSlot, GitSlot, GitSlot];
    const settled = new Map<string, GitSlot | GitSlotRefusal>();
    const wait = (name: string, client: string): { cancel: () => void } => {
      const { slot, cancel } = slots.acquire(client);
      void slot.then((s) => settled.set(name, s));
      return { cancel };
    };
    wait('a3', 'a');
    wait('c1', 'c');
    wait('a4', 'a');
    expect(slots.queued).to.equal(3);
    // 'a' may have maxPerClient (2) waiting, and the node maxTotal (3) in all: beyond, refused at once.
    expect(await slots.acquire('a').slot).to.deep.equal({ refused: 'node' });
    expect(await slots.acquire('e').slot).to.deep.equal({ refused: 'node' });
    expect(slots.queued).to.equal(3);

    // b's slot frees: the node has room, but a3 and a4 wait for a's share; c1 fits and goes first.
    b1.release();
    await Promise.resolve();
    expect([...settled.keys()]).to.deep.equal(['c1']);
    // A wait given up (its client went away) leaves the queue, refused.
    const gone = wait('d1', 'd');
    expect(slots.queued).to.equal(3);
    gone.cancel();
    await Promise.resolve();
    expect(settled.get('d1')).to.deep.equal({ refused: 'client' });
    expect(slots.queued).to.equal(2);
    a1.release();
    await Promise.resolve();
    expect(settled.has('a3') && !settled.has('a4'), 'the older of a\'s waits is served first').to.equal(true);
    expect(slots.inUse).to.equal(3);

    // The rest waits out its time and is refused, for the node being full.
    clock.advance(999);
    await Promise.resolve();
    expect(settled.has('a4')).to.equal(false);
    clock.advance(1);
    await Promise.resolve();
    expect(settled.get('a4')).to.deep.equal({ refused: 'node' });
    expect(slots.queued).to.equal(0);
    a2.release();
    expect(slots.inUse).to.equal(2);
  });

  it('refuses at once with no queue, or a wait of 0', async function () {
    for (const slots of [new GitSlots(1, 1), new GitSlots(1, 1, { waitMs: 0, clock: new ManualClock(0) })]) {
      slots.take('a');
      expect(await slots.acquire('a').slot).to.deep.equal({ refused: 'node' });
      expect(slots.queued).to.equal(0);
    }
  });
});
