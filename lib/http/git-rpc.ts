import { BlockList, isIP } from 'node:net';
import type { TrustedProxy } from '../base/config.js';
import { plainAddress } from './connection-cap.js';
import type { GitService } from './router.js';
import type { Clock } from '../base/clock.js';
import { PKT_MAX_BYTES } from '../git/pkt-line.js';

// The head of a smart-HTTP RPC request body, checked before git sees it. Pure: bytes in, a verdict
// out; no I/O. Linear in the bytes fed and bounded in what it keeps (at most one pkt-line prefix).
//
// gitprotocol-common(5), pkt-line format:
//   pkt-line     = data-pkt / flush-pkt
//   data-pkt     = pkt-len pkt-payload
//   pkt-len      = 4*(HEXDIG)
//   flush-pkt    = "0000"
//   "0001" is the delim-pkt and "0002" the response-end-pkt of protocol v2; any other pkt-len below
//   4 is invalid, and a pkt-line is at most 65520 bytes (LARGE_PACKET_MAX).
// The request head is the pkt-lines up to the first flush-pkt: the commands of receive-pack (then the
// pack follows, which is not pkt-lines), the wants of upload-pack v0, the command of protocol v2.
// node-git-server matched a regular expression over the raw first chunk instead: quadratic on junk
// (64 KB of 'a' held the event loop ~5 s). Here every byte is looked at once, and the head is capped.

/** Bytes of the first payload compared with what the service expects. */
const FIRST_LINE_PREFIX_BYTES = 140;

/**
 * What a first request line may start with (gitprotocol-pack(5), gitprotocol-v2(5)): receive-pack
 * begins with a command `<old-oid> SP <new-oid> SP <ref>` (or a shallow line or a push certificate),
 * upload-pack with `want` (v0/v1) or `command=` (v2).
 */
const FIRST_LINE: Record<GitService, RegExp> = {
  'receive-pack': /^(?:(?:[0-9a-f]{40}|[0-9a-f]{64}) (?:[0-9a-f]{40}|[0-9a-f]{64}) |shallow |push-cert\0)/,
  'upload-pack': /^(?:want |command=)/,
};

export type HeadVerdict = { state: 'more' } | { state: 'done' } | { state: 'invalid'; message: string };

/**
 * Feeds chunks of a request body; says `more` while the head is incomplete and fine so far, `done`
 * once the head's flush-pkt has passed (the rest is not looked at), `invalid` at the first byte that
 * cannot belong to a valid head or once the head exceeds `maxHeadBytes`.
 */
export class RequestHeadScanner {
  private readonly service: GitService;
  private readonly maxHeadBytes: number;
  private verdict: HeadVerdict = { state: 'more' };
  /** Bytes of the head seen so far. */
  private consumed = 0;
  /** The pkt-len being read (0-4 hex digits). */
  private lenDigits = '';
  /** Payload bytes of the current pkt-line still to skip. */
  private payloadLeft = 0;
  /** The first pkt-line's payload prefix, kept until it can be checked. */
  private first: Uint8Array[] | undefined = [];
  private firstBytes = 0;
  private firstWanted = 0;
  /** pkt-lines with a payload before the first flush: for a push, its commands (one per ref). */
  private lines = 0;

  constructor(service: GitService, maxHeadBytes: number) {
    this.service = service;
    this.maxHeadBytes = maxHeadBytes;
  }

  get state(): HeadVerdict {
    return this.verdict;
  }

  /** pkt-lines with a payload seen before the first flush (a push's ref updates, once `state` is done). */
  get commands(): number {
    return this.lines;
  }

  /** True once the first pkt-line was seen and found plausible: the moment git may be started. */
  get firstLineChecked(): boolean {
    return this.first === undefined && this.verdict.state !== 'invalid';
  }

  feed(chunk: Uint8Array): HeadVerdict {
    let i = 0;
    while (i < chunk.length && this.verdict.state === 'more') {
      if (this.consumed >= this.maxHeadBytes) return this.fail(`the request head exceeds ${this.maxHeadBytes} bytes`);
      if (this.payloadLeft > 0) {
        const take = Math.min(this.payloadLeft, chunk.length - i, this.maxHeadBytes - this.consumed);
        if (this.first !== undefined && this.firstBytes < this.firstWanted) {
          const part = chunk.subarray(i, i + Math.min(take, this.firstWanted - this.firstBytes));
          this.first.push(part);
          this.firstBytes += part.length;
        }
        i += take;
        this.consumed += take;
        this.payloadLeft -= take;
        if (this.first !== undefined && (this.firstBytes >= this.firstWanted || this.payloadLeft === 0)) this.checkFirstLine();
        continue;
      }
      const c = chunk[i]!;
      const hex = (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46);
      if (!hex) return this.fail('the request body is not in pkt-line format');
      this.lenDigits += String.fromCharCode(c);
      i += 1;
      this.consumed += 1;
      if (this.lenDigits.length < 4) continue;
      const len = parseInt(this.lenDigits, 16);
      this.lenDigits = '';
      if (len === 0) {
        // A flush first: an empty request (git sends one for a push with nothing to update).
        this.first = undefined;
        this.verdict = { state: 'done' };
      } else if (len === 1 || len === 2) {
        if (this.first !== undefined) return this.fail('the request does not start with a command');
      } else if (len < 4 || len > PKT_MAX_BYTES) {
        return this.fail(`invalid pkt-line length ${len}`);
      } else {
        this.payloadLeft = len - 4;
        this.lines += 1;
        if (this.first !== undefined) this.firstWanted = Math.min(this.payloadLeft, FIRST_LINE_PREFIX_BYTES);
        if (this.payloadLeft === 0 && this.first !== undefined) this.checkFirstLine();
      }
    }
    return this.verdict;
  }

  private checkFirstLine(): void {
    const prefix = Buffer.concat(this.first ?? []).toString('latin1');
    this.first = undefined;
    if (!FIRST_LINE[this.service].test(prefix)) this.fail(`the request does not start with a git-${this.service} command`);
  }

  private fail(message: string): HeadVerdict {
    this.verdict = { state: 'invalid', message };
    return this.verdict;
  }
}

/** How a request body is decoded: HTTP content-codings git sends (gzip) and the other standard one. */
export type BodyDecoding = 'identity' | 'gzip' | 'deflate';

/** The decoding for a content-encoding header, or undefined when we do not support it. */
export function bodyDecoding(header: string | undefined): BodyDecoding | undefined {
  const value = (header ?? '').trim().toLowerCase();
  if (value === '' || value === 'identity') return 'identity';
  if (value === 'gzip' || value === 'x-gzip') return 'gzip';
  // RFC 9110 8.4.1.2: "deflate" is the zlib format (RFC 1950), i.e. zlib's inflate, not raw deflate.
  if (value === 'deflate') return 'deflate';
  return undefined;
}

/** Whether an address (as plainAddress writes it) is one of TRUSTED_PROXIES. */
export type TrustedCheck = (address: string) => boolean;

/** The check for TRUSTED_PROXIES (lib/base/config.ts); with none, no address is trusted. */
export function trustedProxyCheck(proxies: readonly TrustedProxy[]): TrustedCheck {
  if (proxies.length === 0) return () => false;
  const list = new BlockList();
  for (const p of proxies) list.addSubnet(p.address, p.prefix, p.family);
  return (address) => {
    const family = isIP(address);
    return family !== 0 && list.check(address, family === 4 ? 'ipv4' : 'ipv6');
  };
}

/**
 * The address a request is charged to (the per-client caps) and logged with. Each proxy appends the
 * address it saw to x-forwarded-for (a peer proxying a client's request too: http-proxy's xfwd), so
 * an entry is believed only when the hop that wrote it is: the list is read from its end while the
 * hop is a peer (the first one only) or a TRUSTED_PROXIES address, as nginx's real_ip_recursive does.
 * Entries further left were written by the client itself, which can write anything there.
 */
export function clientAddress(remoteAddress: string | undefined, forwardedFor: string | string[] | undefined, fromPeer: boolean, trusted: TrustedCheck = () => false): string {
  let client = remoteAddress ?? 'unknown';
  if (forwardedFor === undefined) return client;
  const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',');
  let hopTrusted = fromPeer || trusted(plainAddress(remoteAddress));
  for (let i = hops.length - 1; i >= 0 && hopTrusted; i -= 1) {
    const entry = hops[i]!.trim();
    if (entry === '') break;
    client = entry;
    hopTrusted = trusted(plainAddress(entry));
  }
  return client;
}

/** A git RPC's place under the caps; `release` is idempotent. */
export interface GitSlot {
  release: () => void;
}

/** Why an RPC got no slot: this node is full, or this client holds its share of it. */
export interface GitSlotRefusal {
  refused: 'node' | 'client';
}

/** How long an RPC beyond a cap may wait for a slot, and on what clock (GitSlots.acquire). */
export interface GitSlotQueue {
  waitMs: number;
  clock: Pick<Clock, 'setTimeout' | 'clearTimeout'>;
}

interface Waiter {
  client: string;
  resolve: (answer: GitSlot | GitSlotRefusal) => void;
  timer: unknown;
}

/**
 * Counts git RPCs in flight per node and per client address. An RPC beyond a cap may wait, first in
 * first out, up to `waitMs` for a slot (`acquire`), as Gitaly's concurrency limiter queues: git
 * clients do not retry a 503, so a burst a little over the cap (32 clients from one address while
 * their pushes hold the coordinator's slots) failed a clone that a moment's wait would have served.
 * The queue is bounded like the slots (at most maxPerClient waiting per client and maxTotal in all);
 * beyond it, and after the wait, the answer is the refusal.
 */
export class GitSlots {
  private readonly maxTotal: number;
  private readonly maxPerClient: number;
  private total = 0;
  private readonly perClient = new Map<string, number>();
  private readonly waiting: Waiter[] = [];

  constructor(
    maxTotal: number,
    maxPerClient: number,
    private readonly queue?: GitSlotQueue,
  ) {
    this.maxTotal = maxTotal;
    this.maxPerClient = maxPerClient;
  }

  get inUse(): number {
    return this.total;
  }

  /** RPCs waiting for a slot now. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Takes a slot for `client` now; returns its release (idempotent), or why there is none. */
  take(client: string): GitSlot | GitSlotRefusal {
    const refusal = this.refusal(client);
    return refusal ?? this.grant(client);
  }

  /**
   * A slot for `client`: now, or once one frees within the queue's wait (then in arrival order), or
   * the refusal. `cancel` gives up the wait (the client went away): `slot` then resolves to a refusal.
   */
  acquire(client: string): { slot: Promise<GitSlot | GitSlotRefusal>; cancel: () => void } {
    const now = this.take(client);
    const { queue } = this;
    // The queue is scanned only for an RPC that would wait: one that takes a slot at once costs nothing more.
    if (
      !('refused' in now) ||
      queue === undefined ||
      queue.waitMs <= 0 ||
      this.waiting.length >= this.maxTotal ||
      this.waiting.filter((w) => w.client === client).length >= this.maxPerClient
    ) {
      return { slot: Promise.resolve(now), cancel: () => undefined };
    }
    let waiter!: Waiter;
    const slot = new Promise<GitSlot | GitSlotRefusal>((resolve) => {
      waiter = { client, resolve, timer: undefined };
    });
    const leave = (): boolean => {
      const at = this.waiting.indexOf(waiter);
      if (at < 0) return false;
      this.waiting.splice(at, 1);
      queue.clock.clearTimeout(waiter.timer);
      return true;
    };
    waiter.timer = queue.clock.setTimeout(() => {
      if (leave()) waiter.resolve(this.refusal(client) ?? { refused: 'client' });
    }, queue.waitMs);
    this.waiting.push(waiter);
    return {
      slot,
      cancel: () => {
        if (leave()) waiter.resolve({ refused: 'client' });
      },
    };
  }

  private refusal(client: string): GitSlotRefusal | undefined {
    if (this.total >= this.maxTotal) return { refused: 'node' };
    if ((this.perClient.get(client) ?? 0) >= this.maxPerClient) return { refused: 'client' };
    return undefined;
  }

  private grant(client: string): GitSlot {
    this.total += 1;
    this.perClient.set(client, (this.perClient.get(client) ?? 0) + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.total -= 1;
        const left = (this.perClient.get(client) ?? 1) - 1;
        if (left <= 0) this.perClient.delete(client);
        else this.perClient.set(client, left);
        this.serveWaiting();
      },
    };
  }

  /** Hands freed slots to the waiting RPCs that fit now, oldest first. */
  private serveWaiting(): void {
    for (let i = 0; i < this.waiting.length && this.total < this.maxTotal; ) {
      const waiter = this.waiting[i]!;
      if (this.refusal(waiter.client) !== undefined) {
        i += 1;
        continue;
      }
      this.waiting.splice(i, 1);
      this.queue?.clock.clearTimeout(waiter.timer);
      waiter.resolve(this.grant(waiter.client));
    }
  }
}
