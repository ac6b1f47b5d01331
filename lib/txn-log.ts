import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { LogEntry } from './txn-core.js';

// The transaction log: one JSON object per line, append-only, fsynced before `append` resolves.
// Appends that arrive while a write is in flight are grouped into the next write and share one
// fsync (group commit), which is what lets many concurrent transactions run at disk-flush cost.
//
// A crash can leave a torn last line; replay ignores a final line that does not parse (it was never
// acknowledged, because its fsync never returned) and refuses to start on a torn line anywhere else.

export class TxnLog {
  private readonly file: string;
  private handle: fs.FileHandle | undefined;
  private queue: { line: string; resolve: () => void; reject: (err: unknown) => void }[] = [];
  private writing = false;

  constructor(dataDir: string) {
    this.file = path.join(dataDir, 'txn.log');
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
    if (good.length !== text.length) await fs.writeFile(this.file, good);
    return entries;
  }

  async open(): Promise<void> {
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    this.handle = await fs.open(this.file, 'a');
  }

  append(entry: LogEntry): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ line: JSON.stringify(entry) + '\n', resolve, reject });
      if (!this.writing) void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.writing = true;
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
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

  async close(): Promise<void> {
    await this.handle?.close();
    this.handle = undefined;
  }
}
