import type { Duplex } from 'node:stream';
import type { Clock } from '../base/clock.js';
import { REF_UPDATE_BYTES } from '../core/txn-core.js';
import { FLUSH_PKT, MAX_PKT_PAYLOAD, pktLine } from './pkt-line.js';

// git's proc-receive hook protocol (githooks(5), "proc-receive"), spoken by the node itself with
// receive-pack. The hook (lib/git/hooks.ts) only opens a connection to the node, upgrades it and
// relays bytes both ways with cat: bash reads a pipe one byte per system call, and a push of 501
// refs sends 53 KB of commands, which took the hook 0.1 s to parse in bash, the whole gain of
// committing the refs in one transaction.
//
//   receive-pack: PKT-LINE(version=1\0<capabilities>) flush
//   node:         PKT-LINE(version=1) flush
//   receive-pack: PKT-LINE(<old> <new> <ref>)... flush    (no push options: we do not ask for them)
//   node:         PKT-LINE(ok <ref> | ng <ref> <reason>)... flush

/** The Upgrade token of the hook's request (HTTP/1.1 upgrade, as WebSockets do it). */
export const PROC_RECEIVE_UPGRADE = 'quorum-git-proc-receive';

export interface ProcReceiveOptions {
  clock: Clock;
  /** The whole exchange must be over within this (the socket is destroyed otherwise). */
  timeoutMs: number;
  /** At most this many commands (the refs-per-push limit). */
  maxCommands: number;
}


/** Reads pkt-lines from a stream: a payload, or null for a flush-pkt. */
class PktReader {
  private buffer: Buffer = Buffer.alloc(0);
  private waiting: (() => void) | undefined;
  private failure: Error | undefined;

  private received = 0;

  /** `maxBytes`: more than this from receive-pack ends the exchange. */
  constructor(stream: Duplex, head: Buffer, maxBytes: number) {
    this.buffer = Buffer.from(head);
    stream.on('data', (chunk: Buffer) => {
      this.received += chunk.length;
      if (this.received + head.length > maxBytes) {
        this.fail(new Error(`receive-pack sent over ${maxBytes} bytes`));
        return;
      }
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      this.wake();
    });
    stream.on('end', () => this.fail(new Error('receive-pack ended the exchange early')));
    stream.on('error', (err) => this.fail(err));
    stream.on('close', () => this.fail(new Error('the hook connection closed')));
  }

  async next(): Promise<Buffer | null> {
    for (;;) {
      if (this.buffer.length >= 4) {
        const hex = this.buffer.subarray(0, 4).toString('latin1');
        if (!/^[0-9a-f]{4}$/.test(hex)) throw new Error(`not a pkt-line length: ${JSON.stringify(hex)}`);
        const length = parseInt(hex, 16);
        if (length === 0) {
          this.buffer = this.buffer.subarray(4);
          return null;
        }
        if (length < 5 || length - 4 > MAX_PKT_PAYLOAD) throw new Error(`bad pkt-line length ${length}`);
        if (this.buffer.length >= length) {
          const payload = this.buffer.subarray(4, length);
          this.buffer = this.buffer.subarray(length);
          return payload;
        }
      }
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.wake();
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }
}

/**
 * Serves one proc-receive exchange on `socket` (`head`: bytes that came with the upgrade). `report`
 * gets receive-pack's commands ("<old> <new> <ref>" lines) and answers one "ok <ref>" or
 * "ng <ref> <reason>" line for each. Rejects (and destroys the socket) on anything else; receive-pack
 * then fails every ref with "proc-receive failed to report status".
 */
export async function serveProcReceive(socket: Duplex, head: Buffer, report: (commands: string[]) => Promise<string[]>, options: ProcReceiveOptions): Promise<void> {
  const reader = new PktReader(socket, head, 1024 + options.maxCommands * REF_UPDATE_BYTES);
  const timer = options.clock.setTimeout(() => socket.destroy(new Error(`the proc-receive exchange took over ${options.timeoutMs} ms`)), options.timeoutMs);
  try {
    const version = await reader.next();
    const line = version?.toString('latin1').split('\0')[0]!.replace(/\n$/, '');
    if (line !== 'version=1') throw new Error(`receive-pack speaks proc-receive ${JSON.stringify(line ?? 'flush')}, not version=1`);
    if ((await reader.next()) !== null) throw new Error('no flush after the version');
    socket.write(Buffer.concat([pktLine('version=1\n'), FLUSH_PKT]));
    const commands: string[] = [];
    for (let pkt = await reader.next(); pkt !== null; pkt = await reader.next()) {
      if (commands.length >= options.maxCommands) throw new Error(`more than ${options.maxCommands} ref updates`);
      commands.push(pkt.toString('utf8').replace(/\n$/, ''));
    }
    const lines = await report(commands);
    socket.end(Buffer.concat([...lines.map((l) => pktLine(`${l}\n`)), FLUSH_PKT]));
  } catch (err) {
    socket.destroy();
    throw err;
  } finally {
    options.clock.clearTimeout(timer);
  }
}
