import { expect } from 'chai';
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { silentLogger } from '../../lib/base/logger.js';
import { PackStartFinder, PackTee, PackTrailerCheck } from '../../lib/cluster/pack-tee.js';
import { STAGE_ID } from '../../lib/core/repo-id.js';

// Streaming a push's pack to the peers while its client sends it (lib/cluster/pack-tee.ts): where
// the pack begins in the request body, what each peer gets, and what a peer keeps.

const OID_A = 'a'.repeat(40);
const OID_B = 'b'.repeat(40);

function pkt(line: string): Buffer {
  return Buffer.from((4 + Buffer.byteLength(line)).toString(16).padStart(4, '0') + line, 'latin1');
}

/** A well-formed pack's bytes: header, `size` bytes of body, and the SHA-1 of both as trailer. */
function fakePack(size: number): Buffer {
  const content = Buffer.concat([Buffer.from('PACK'), Buffer.from([0, 0, 0, 2, 0, 0, 0, 3]), randomBytes(size)]);
  return Buffer.concat([content, createHash('sha1').update(content).digest()]);
}

/** A push request's body: commands, their flush, optional push options with theirs, then the pack. */
function pushBody(pack: Buffer, options: string[] = []): Buffer {
  const parts = [pkt(`${OID_A} ${OID_B} refs/heads/main\0report-status side-band-64k push-options\n`), pkt(`${'0'.repeat(40)} ${OID_B} refs/tags/v1\n`), Buffer.from('0000')];
  if (options.length > 0) parts.push(...options.map((o) => pkt(o)), Buffer.from('0000'));
  parts.push(pack);
  return Buffer.concat(parts);
}

function chunks(bytes: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += size) out.push(bytes.subarray(at, at + size));
  return out;
}

interface FakePeer {
  received: Buffer;
  stageId: string;
}

/** A tee over peers whose uploads collect what they are sent (`fail`: those peers' uploads fail). */
function teeWith(peers: string[], opts: { minPackBytes?: number; maxBufferedBytes?: number; fail?: string[]; stall?: string[] } = {}) {
  const got = new Map<string, FakePeer>();
  const calls: string[] = [];
  const discarded: string[] = [];
  const tee = new PackTee({
    peers,
    minPackBytes: opts.minPackBytes ?? 1024,
    maxPreambleBytes: 64 * 1024,
    maxBufferedBytes: opts.maxBufferedBytes ?? 1 << 30,
    logger: silentLogger(),
    discard: async (peer, stageId) => void discarded.push(`${peer} ${stageId}`),
    upload: async (peer, stageId, body) => {
      calls.push(peer);
      if (opts.stall?.includes(peer)) {
        // Never reads: what it is sent piles up in the tee's buffer.
        await new Promise<void>((resolve, reject) => body.once('error', reject).once('close', resolve));
        return;
      }
      const parts: Buffer[] = [];
      await pipeline(body, new Writable({ write: (c: Buffer, _e, done) => (parts.push(c), done()) }));
      if (opts.fail?.includes(peer)) throw new Error('peer refused');
      got.set(peer, { received: Buffer.concat(parts), stageId });
    },
  });
  return { tee, got, calls, discarded };
}

describe('PackStartFinder', function () {
  it('finds the pack after the commands (and after push options), in chunks of any size', function () {
    const pack = fakePack(100);
    for (const options of [[], ['ci.skip', 'merge_request.create']]) {
      const body = pushBody(pack, options);
      const start = body.length - pack.length;
      for (const size of [1, 2, 3, 4, 5, 7, 64, 4096]) {
        const finder = new PackStartFinder(1 << 20);
        let found: number | undefined;
        let offset = 0;
        for (const c of chunks(body, size)) {
          const at = finder.feed(c);
          if (at !== undefined) found = offset + at;
          offset += c.length;
        }
        expect(finder.state, `chunks of ${size}`).to.equal('found');
        expect(found, `chunks of ${size}, options ${options.length}`).to.equal(start);
      }
    }
  });

  it('gives up on a length that is not pkt-line hex, and on too many bytes before any pack', function () {
    const junk = new PackStartFinder(1 << 20);
    junk.feed(Buffer.from('00zzjunk'));
    expect(junk.state).to.equal('none');
    const long = new PackStartFinder(100);
    for (let i = 0; i < 10; i++) long.feed(pkt(`${OID_A} ${OID_B} refs/heads/b${i}\n`));
    expect(long.state).to.equal('none');
    // A delete-only push has no pack: the search never ends by itself, and no stream is opened.
    const deletes = new PackStartFinder(1 << 20);
    deletes.feed(Buffer.concat([pkt(`${OID_A} ${'0'.repeat(40)} refs/heads/old\n`), Buffer.from('0000')]));
    expect(deletes.state).to.equal('scanning');
  });
});

describe('PackTee', function () {
  it('streams exactly the pack bytes to every peer, under a stage id each, however the body is cut', async function () {
    const pack = fakePack(50_000);
    for (const size of [1000, 4, 65536]) {
      const { tee, got } = teeWith(['p1', 'p2']);
      for (const c of chunks(pushBody(pack, ['opt']), size)) tee.feed(c);
      tee.end();
      for (const peer of ['p1', 'p2']) {
        const stageId = await tee.staged(peer);
        expect(stageId, `${peer}, chunks of ${size}`).to.match(STAGE_ID);
        expect(got.get(peer)!.stageId).to.equal(stageId);
        expect(got.get(peer)!.received.equals(pack), `${peer} got the pack, byte for byte`).to.equal(true);
      }
      expect(await tee.staged('p3'), 'not a peer of the tee').to.equal(undefined);
    }
  });

  it("takes the stages as whole when the hook asks before the request body's end has come", async function () {
    // receive-pack reads the pack by its own length and runs the hook once it has it all, so the
    // hook may ask while the body's end (a chunked terminator, through a loaded proxying node) is
    // still on its way. Every byte receive-pack read passed through the tee: the pack is whole.
    const pack = fakePack(50_000);
    const { tee, got } = teeWith(['p1', 'p2']);
    for (const c of chunks(pushBody(pack), 4096)) tee.feed(c);
    const stages = [await tee.staged('p1'), await tee.staged('p2')];
    for (const [i, peer] of ['p1', 'p2'].entries()) {
      expect(stages[i], peer).to.match(STAGE_ID);
      expect(got.get(peer)!.received.equals(pack), `${peer} got the pack, byte for byte`).to.equal(true);
    }
    // The end, or a failure, arriving afterwards changes nothing.
    tee.end();
    tee.abandon();
    expect(await tee.staged('p1')).to.equal(stages[0]);
    expect(await tee.staged('p2')).to.equal(stages[1]);
  });

  it('streams nothing for a pack smaller than what rides inline with the prepares', async function () {
    const { tee, calls } = teeWith(['p1', 'p2'], { minPackBytes: 1024 });
    for (const c of chunks(pushBody(fakePack(500)), 64)) tee.feed(c);
    tee.end();
    expect(calls).to.deep.equal([]);
    expect(await tee.staged('p1')).to.equal(undefined);
  });

  it('leaves a peer whose upload failed to the hook, and keeps the others', async function () {
    const { tee } = teeWith(['p1', 'p2'], { fail: ['p2'] });
    for (const c of chunks(pushBody(fakePack(10_000)), 999)) tee.feed(c);
    tee.end();
    expect(await tee.staged('p1')).to.match(STAGE_ID);
    expect(await tee.staged('p2')).to.equal(undefined);
  });

  it('once the push is over, has every peer drop a stage it did not take, and only those', async function () {
    const { tee, discarded } = teeWith(['p1', 'p2', 'p3'], { fail: ['p3'] });
    for (const c of chunks(pushBody(fakePack(10_000)), 999)) tee.feed(c);
    tee.end();
    const s1 = await tee.staged('p1');
    const s2 = await tee.staged('p2');
    tee.markAdopted('p1');
    expect(tee.adopted).to.equal(1);
    await tee.release();
    // p1 took its copy; p3 holds none (its upload failed, and the peer drops a failed one itself).
    expect(discarded).to.deep.equal([`p2 ${s2}`]);
    expect(s1).to.match(STAGE_ID);
  });

  it('cuts every stream off when the request fails before its body is over', async function () {
    const { tee, got } = teeWith(['p1', 'p2']);
    const body = pushBody(fakePack(10_000));
    tee.feed(body.subarray(0, 5000));
    tee.abandon();
    expect(await tee.staged('p1')).to.equal(undefined);
    expect(await tee.staged('p2')).to.equal(undefined);
    expect(got.size, 'no peer finished an upload').to.equal(0);
  });

  it('gives up on a peer that falls further behind the client than its buffer allows, and not on the others', async function () {
    const { tee } = teeWith(['fast', 'stalled'], { maxBufferedBytes: 64 * 1024, stall: ['stalled'] });
    for (const c of chunks(pushBody(fakePack(1024 * 1024)), 16 * 1024)) tee.feed(c);
    tee.end();
    expect(await tee.staged('stalled')).to.equal(undefined);
    expect(await tee.staged('fast')).to.match(STAGE_ID);
  });
});

describe('PackTrailerCheck', function () {
  async function check(bytes: Buffer, size: number): Promise<{ checksum: string | undefined; passed: Buffer }> {
    const c = new PackTrailerCheck();
    const parts: Buffer[] = [];
    await pipeline(Readable.from(chunks(bytes, size)), c, new Writable({ write: (b: Buffer, _e, done) => (parts.push(b), done()) }));
    return { checksum: c.checksum, passed: Buffer.concat(parts) };
  }

  it("names a pack by its trailer when the trailer is the SHA-1 of what precedes it, and passes every byte on", async function () {
    const pack = fakePack(3000);
    const expected = pack.subarray(pack.length - 20).toString('hex');
    for (const size of [1, 7, 19, 20, 21, 4096]) {
      const { checksum, passed } = await check(pack, size);
      expect(checksum, `chunks of ${size}`).to.equal(expected);
      expect(passed.equals(pack)).to.equal(true);
    }
  });

  it('names nothing for a pack with a byte changed, cut short, or too short to be one', async function () {
    const pack = fakePack(3000);
    const flipped = Buffer.from(pack);
    flipped[1500] = flipped[1500]! ^ 1;
    expect((await check(flipped, 512)).checksum).to.equal(undefined);
    expect((await check(pack.subarray(0, pack.length - 1), 512)).checksum).to.equal(undefined);
    expect((await check(Buffer.from('PACK'), 1)).checksum).to.equal(undefined);
    const empty = createHash('sha1').update(Buffer.alloc(0)).digest();
    expect((await check(empty, 1)).checksum, 'a bare hash of nothing').to.equal(undefined);
  });
});
