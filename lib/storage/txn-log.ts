import { promises as fs } from 'node:fs';
import path from 'node:path';
import { realDiskSync, replaceFileDurably, type DiskSync } from '../base/durable-fs.js';
import type { LogEntry } from '../core/txn-core.js';

// The transaction log: one JSON object per line, append-only, fsynced before `append` resolves.
// Appends that arrive while a write is in flight are grouped into the next write and share one
// fsync (group commit), which is what lets many concurrent transactions run at disk-flush cost.
//
// A crash can leave a torn last line; replay ignores a final line that does not parse (it was never
// acknowledged, because its fsync never returned) and refuses to start on a torn line anywhere else.
//
// The file is never rewritten in place: cutting a torn tail and `rewrite` (checkpointing) write a
// synced copy and rename it over the log, then sync the directory, so a crash at any point leaves the
// old log or the new one, whole. A truncating write would lose entries fsynced long ago if the
// machine died between the truncate and the write.

export interface TxnLogOptions {
  /** The fsyncs (real by default); specs record them to check their order against the renames. */
  disk?: DiskSync;
}

type Pending =
  | { kind: 'append'; line: string; resolve: () => void; reject: (err: unknown) => void }
  | { kind: 'rewrite'; content: string; resolve: () => void; reject: (err: unknown) => void };

export class TxnLog {
  private readonly file: string;
  private readonly disk: DiskSync;
  private handle: fs.FileHandle | undefined;
  /** Appends and rewrites in the order they were asked for; one writer works through them. */
  private queue: Pending[] = [];
  private writing = false;
  private appended = 0;

  constructor(dataDir: string, options: TxnLogOptions = {}) {
    this.file = path.join(dataDir, 'txn.log');
    this.disk = options.disk ?? realDiskSync;
  }

  /** Reads every entry written so far, in order. */
  async replay(): Promise<LogEntry[]> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const lines = text.split('\n');
    const entries: LogEntry[] = [];
    for (let i = 0; i < lines.length; i += 1) {
      const line = lines[i]!;
      if (line === '') continue;
      try {
        entries.push(JSON.parse(line) as LogEntry);
      } catch (err) {
        const isLast = lines.slice(i + 1).every((l) => l === '');
        if (isLast) break;
        throw new Error(`${this.file}: line ${i + 1} is corrupt; refusing to start`, { cause: err });
      }
    }
    // A torn tail is cut off so the next append starts on a line of its own.
    const good = entries.map((e) => JSON.stringify(e) + '\n').join('');
    if (good.length !== text.length) await replaceFileDurably(this.disk, this.file, good);
    return entries;
  }

  async open(): Promise<void> {
    const dir = path.dirname(this.file);
    await fs.mkdir(dir, { recursive: true });
    this.handle = await fs.open(this.file, 'a');
    // The log may have just been created: without this its name, and so every entry fsynced into it,
    // could vanish with a power cut. Once per start, so it is synced whether new or not.
    await this.disk.syncDir(dir);
  }

  /** Entries appended since the log was opened or last rewritten: when a checkpoint is due. */
  get entriesSinceRewrite(): number {
    return this.appended;
  }

  append(entry: LogEntry): Promise<void> {
    this.appended += 1;
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: 'append', line: JSON.stringify(entry) + '\n', resolve, reject });
      if (!this.writing) void this.flush();
    });
  }

  /**
   * Atomically replaces the whole log with `entries` (a checkpoint): afterwards the log holds exactly
   * `entries` followed by every append made after this call, in order. Appends made before the call
   * are written (to the old log) first and are then superseded: `entries` must cover what recovery
   * needs of them. Appends made while the rewrite runs wait for it and land in the new file, once.
   * A failure before the rename leaves the old log in place, still the one appended to.
   */
  rewrite(entries: readonly LogEntry[]): Promise<void> {
    this.appended = 0;
    return new Promise((resolve, reject) => {
      const content = entries.map((e) => JSON.stringify(e) + '\n').join('');
      this.queue.push({ kind: 'rewrite', content, resolve, reject });
      if (!this.writing) void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.writing = true;
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      if (head.kind === 'rewrite') {
        this.queue.shift();
        try {
          await this.swapIn(head.content);
          head.resolve();
        } catch (err) {
          head.reject(err);
        }
        continue;
      }
      // Every append up to the next rewrite shares one write and one fsync.
      const end = this.queue.findIndex((p) => p.kind === 'rewrite');
      const batch = this.queue.splice(0, end === -1 ? this.queue.length : end) as Extract<Pending, { kind: 'append' }>[];
      try {
        if (!this.handle) throw new Error('transaction log is not open');
        await this.handle.write(batch.map((b) => b.line).join(''));
        await this.handle.datasync();
        for (const b of batch) b.resolve();
      } catch (err) {
        for (const b of batch) b.reject(err);
      }
    }
    this.writing = false;
  }

  /**
   * Writes `content` to a copy opened for appending, syncs it and renames it over the log; the copy's
   * handle is then the log's append handle, so no append can go to the replaced file. A crash before
   * the rename leaves a stray `.tmp` that the next rewrite removes; after it, the new log.
   */
  private async swapIn(content: string): Promise<void> {
    if (!this.handle) throw new Error('transaction log is not open');
    const tmp = `${this.file}.tmp`;
    // Opened for appending (O_APPEND), as the log's handle always is; a stray copy goes first.
    await fs.rm(tmp, { force: true });
    const next = await fs.open(tmp, 'a');
    try {
      await next.writeFile(content);
      await this.disk.syncFile(next, tmp);
      await fs.rename(tmp, this.file);
    } catch (err) {
      await next.close();
      throw err;
    }
    const old = this.handle;
    this.handle = next;
    await old.close().catch(() => undefined);
    await this.disk.syncDir(path.dirname(this.file));
  }

  async close(): Promise<void> {
    await this.handle?.close();
    this.handle = undefined;
  }
}
