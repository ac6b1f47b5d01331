import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';
import type { Logger } from '../base/logger.js';
import type { NodeId } from '../core/txn-core.js';

// A large push's pack, streamed to the peers while our receive-pack is still taking it in.
//
// Without it the pack travels twice in a row: the client sends it to us, receive-pack indexes it,
// and only then does the pre-receive hook ship it to every peer (measured: 0.36-0.55 s of a
// 21 MiB push's 3-4 s, on its critical path, with the peers writing and fsyncing it). Here the
// request body's pack bytes go to each peer as they arrive ("staged"), and the hook then only ships
// the index and asks each peer to take its staged copy as the push's pack (PushService).
//
// Nothing is trusted on the way: a peer keeps a staged stream only if its trailer is the SHA-1 of
// everything before it, and adopts it only under the name receive-pack gave the pack it indexed,
// which is that same checksum. A pack receive-pack changed (a thin pack it completed with bases,
// so its checksum changed), a peer that fell behind the client, a stream cut off: the hook finds no
// staged copy under that name and uploads the file as before. Stages nobody adopted are swept with
// abandoned uploads (RepoStore.sweepIncoming).

/** A new stage's name (core/repo-id.ts STAGE_ID): a peer keeps it in its incoming directory, beside shipped packs. */
export function newStageId(): string {
  return `stage-${randomBytes(12).toString('hex')}`;
}

/**
 * Finds where a push request's pack begins: after its pkt-lines (the commands, their flush, and any
 * push options with theirs). Fed the body chunk by chunk; `feed` returns the offset of the pack's
 * first byte in the chunk that holds it, once. A length that is not pkt-line hex, or more than
 * `maxBytes` before any pack, ends the search (`state` 'none').
 */
export class PackStartFinder {
  state: 'scanning' | 'found' | 'none' = 'scanning';
  private header = '';
  private skip = 0;
  private seen = 0;

  constructor(private readonly maxBytes: number) {}

  /** The offset in `chunk` where the pack begins; negative when its "PACK" began in earlier chunks (that many bytes ago). */
  feed(chunk: Buffer): number | undefined {
    if (this.state !== 'scanning') return undefined;
    let i = 0;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.skip -= n;
        i += n;
        continue;
      }
      this.header += String.fromCharCode(chunk[i]!);
      i += 1;
      if (this.header.length < 4) continue;
      const header = this.header;
      this.header = '';
      if (header === 'PACK') {
        this.state = 'found';
        return i - 4;
      }
      if (!/^[0-9a-f]{4}$/.test(header)) {
        this.state = 'none';
        return undefined;
      }
      const length = parseInt(header, 16);
      // 0000 flush; 0001 delim and 0002 response-end are v2's, harmless to step over.
      if (length > 2 && length < 4) {
        this.state = 'none';
        return undefined;
      }
      this.skip = length > 2 ? length - 4 : 0;
    }
    this.seen += chunk.length;
    if (this.seen > this.maxBytes) this.state = 'none';
    return undefined;
  }
}

export interface PackTeeOptions {
  peers: readonly NodeId[];
  /** Streams `body` to `peer` as stage `stageId`; resolves once the peer holds it whole (checked and fsynced). */
  upload: (peer: NodeId, stageId: string, body: Readable) => Promise<void>;
  /** Tells `peer` to drop stage `stageId` (the push is over and did not take it); never rejects. */
  discard: (peer: NodeId, stageId: string) => Promise<void>;
  /** A pack smaller than this rides inline with the prepares: it is not streamed ahead. */
  minPackBytes: number;
  /** Bytes of pkt-lines before the pack beyond which the body is not searched further. */
  maxPreambleBytes: number;
  /** Bytes a peer may fall behind the client by before its stream is given up (memory, per peer). */
  maxBufferedBytes: number;
  logger: Logger;
}

interface PeerStream {
  body: PassThrough;
  stageId: string;
  done: Promise<boolean>;
  dropped: boolean;
  adopted: boolean;
}

/**
 * One push's streams to the peers. `feed` gets every byte of the request body as receive-pack gets
 * it, `end` its end, `abandon` a request that failed; `staged` says which stage a peer holds the
 * whole pack under. A peer's stream failing never slows or fails the push: the hook uploads instead.
 */
export class PackTee {
  private readonly options: PackTeeOptions;
  private readonly finder: PackStartFinder;
  private state: 'finding' | 'holding' | 'streaming' | 'ended' | 'off' = 'finding';
  private held: Buffer[] = [];
  private heldBytes = 0;
  private readonly streams = new Map<NodeId, PeerStream>();

  constructor(options: PackTeeOptions) {
    this.options = options;
    this.finder = new PackStartFinder(options.maxPreambleBytes);
  }

  feed(chunk: Buffer): void {
    if (this.state === 'finding') {
      const at = this.finder.feed(chunk);
      if (this.finder.state === 'none') this.state = 'off';
      if (at === undefined) return;
      // "PACK" may have begun in the chunks before this one; its bytes are known.
      const data = at >= 0 ? chunk.subarray(at) : Buffer.concat([Buffer.from('PACK'.slice(0, -at)), chunk]);
      this.state = 'holding';
      chunk = data;
    }
    if (this.state === 'holding') {
      this.held.push(chunk);
      this.heldBytes += chunk.length;
      if (this.heldBytes >= this.options.minPackBytes) this.open();
      return;
    }
    if (this.state === 'streaming') this.write(chunk);
  }

  /** The body is over: every stream ends, and a pack too small to stream is forgotten. */
  end(): void {
    if (this.state === 'ended') return;
    if (this.state === 'streaming') for (const s of this.streams.values()) if (!s.dropped) s.body.end();
    this.held = [];
    this.state = this.state === 'streaming' ? 'ended' : 'off';
  }

  /** The request failed before its body was over: every stream is cut off (the peers drop what they got). */
  abandon(): void {
    if (this.state === 'ended') return;
    if (this.state === 'streaming') for (const s of this.streams.values()) this.drop(s, 'the push request failed');
    this.held = [];
    this.state = 'off';
  }

  /**
   * The stage `peer` holds this push's whole pack under, or undefined (then the pack is uploaded).
   * Asked by the hook only, so receive-pack has read the whole pack (it reads it by its own length),
   * and every byte it read came through `feed`: the streams end here if the request body's own end
   * (a chunked terminator, late through a loaded proxying node) has not come yet. Bytes after the
   * pack, if a client sent any, would fail the peer's trailer check: that peer is uploaded to.
   */
  async staged(peer: NodeId): Promise<string | undefined> {
    if (this.state === 'streaming') this.end();
    const s = this.streams.get(peer);
    if (s === undefined || this.state !== 'ended') return undefined;
    return (await s.done) ? s.stageId : undefined;
  }

  /** `peer` took its stage as the push's pack: nothing of it is left to drop. */
  markAdopted(peer: NodeId): void {
    const s = this.streams.get(peer);
    if (s !== undefined) s.adopted = true;
  }

  /** Peers that took their streamed copy as the push's pack (for the hook's log line). */
  get adopted(): number {
    return [...this.streams.values()].filter((s) => s.adopted).length;
  }

  /**
   * The push is over (its receive-pack exited): every stage a peer holds and did not take is dropped
   * now, rather than left for the sweep of idle uploads (a refused push, a thin pack).
   */
  async release(): Promise<void> {
    this.abandon();
    await Promise.all(
      [...this.streams.entries()].map(async ([peer, s]) => {
        if (s.adopted || !(await s.done)) return;
        await this.options.discard(peer, s.stageId);
      }),
    );
  }

  private open(): void {
    this.state = 'streaming';
    const { peers, upload, logger } = this.options;
    for (const peer of peers) {
      const stageId = newStageId();
      const body = new PassThrough();
      const stream: PeerStream = { body, stageId, dropped: false, adopted: false, done: Promise.resolve(false) };
      stream.done = upload(peer, stageId, body).then(
        () => !stream.dropped,
        (err: Error) => {
          logger.debug('pack not streamed ahead to a peer; the hook uploads it', { peer, err: err.message });
          stream.dropped = true;
          return false;
        },
      );
      this.streams.set(peer, stream);
    }
    for (const chunk of this.held) this.write(chunk);
    this.held = [];
  }

  private write(chunk: Buffer): void {
    for (const s of this.streams.values()) {
      if (s.dropped) continue;
      s.body.write(chunk);
      if (s.body.writableLength > this.options.maxBufferedBytes) this.drop(s, 'the peer fell behind the client');
    }
  }

  private drop(s: PeerStream, why: string): void {
    if (s.dropped) return;
    s.dropped = true;
    s.body.destroy(new Error(`pack stream cut off: ${why}`));
  }
}

/**
 * Passes a pack through and checks it on the way: `checksum` is, once the stream has ended, the
 * hex SHA-1 of everything before the last 20 bytes if those bytes are that very hash (a pack's
 * trailer), else undefined. What a peer checks a staged stream with before it keeps it.
 */
export class PackTrailerCheck extends Transform {
  checksum: string | undefined;
  private readonly hash = createHash('sha1');
  private tail = Buffer.alloc(0);
  private size = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    // The last TRAILER bytes seen are held back from the hash: they may be the trailer.
    const all = chunk.length >= TRAILER ? chunk : Buffer.concat([this.tail, chunk]);
    if (all === chunk) this.hash.update(this.tail);
    this.hash.update(all.subarray(0, Math.max(0, all.length - TRAILER)));
    this.tail = Buffer.from(all.subarray(Math.max(0, all.length - TRAILER)));
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    // The smallest pack: a 12-byte header and the trailer.
    const digest = this.hash.digest();
    if (this.size >= 12 + TRAILER && this.tail.length === TRAILER && digest.equals(this.tail)) this.checksum = digest.toString('hex');
    done();
  }
}

const TRAILER = 20;
