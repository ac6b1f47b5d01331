import { expect } from 'chai';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { realDiskSync, type DiskSync } from '../../lib/base/durable-fs.js';
import type { LogEntry } from '../../lib/core/txn-core.js';
import { TxnLog } from '../../lib/storage/txn-log.js';

const refused = (txnId: string): LogEntry => ({ t: 'refused', txnId });
const ids = (entries: LogEntry[]): string[] => entries.map((e) => (e as { txnId: string }).txnId);

/** One sync as the disk saw it, with what txn.log held at that moment (undefined: no such name yet). */
interface SyncEvent {
  kind: 'file' | 'dir';
  name: string;
  logThen: string | undefined;
}

/**
 * The real syncs, recorded: a power cut keeps exactly what was synced, so the order of syncs and
 * renames is what these specs check. `hold` pauses a file sync until released (a slow disk).
 */
function recordingDisk(dir: string): { disk: DiskSync; events: SyncEvent[]; hold: (release: Promise<void>) => Promise<void> } {
  const events: SyncEvent[] = [];
  const logThen = (): string | undefined => (existsSync(path.join(dir, 'txn.log')) ? readFileSync(path.join(dir, 'txn.log'), 'utf8') : undefined);
  let gate: { release: Promise<void>; reached: () => void } | undefined;
  const disk: DiskSync = {
    async syncFile(handle, file) {
      events.push({ kind: 'file', name: path.relative(dir, file), logThen: logThen() });
      const held = gate;
      gate = undefined;
      if (held) {
        held.reached();
        await held.release;
      }
      await realDiskSync.syncFile(handle, file);
    },
    async syncDir(d) {
      await realDiskSync.syncDir(d);
      events.push({ kind: 'dir', name: path.relative(dir, d) || '.', logThen: logThen() });
    },
  };
  const hold = (release: Promise<void>): Promise<void> => new Promise((reached) => (gate = { release, reached }));
  return { disk, events, hold };
}

describe('TxnLog', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-log-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('replays concurrent appends in the order they were made', async () => {
    const log = new TxnLog(dir);
    await log.open();
    await Promise.all(Array.from({ length: 50 }, (_, i) => log.append({ t: 'refused', txnId: `t${i}` })));
    await log.close();
    const entries = await new TxnLog(dir).replay();
    expect(entries.map((e) => (e as { txnId: string }).txnId)).to.deep.equal(Array.from({ length: 50 }, (_, i) => `t${i}`));
  });

  it('drops a torn last line (never acknowledged) and keeps appending after it', async () => {
    await fs.writeFile(path.join(dir, 'txn.log'), '{"t":"refused","txnId":"a"}\n{"t":"refu');
    const log = new TxnLog(dir);
    expect(await log.replay()).to.deep.equal([{ t: 'refused', txnId: 'a' }]);
    await log.open();
    await log.append({ t: 'refused', txnId: 'b' });
    await log.close();
    expect(await new TxnLog(dir).replay()).to.deep.equal([
      { t: 'refused', txnId: 'a' },
      { t: 'refused', txnId: 'b' },
    ]);
  });

  it('refuses to start on a corrupt line in the middle', async () => {
    await fs.writeFile(path.join(dir, 'txn.log'), '{"t":"refused","txnId":"a"}\ngarbage\n{"t":"refused","txnId":"b"}\n');
    let error: Error | undefined;
    await new TxnLog(dir).replay().catch((err: Error) => (error = err));
    expect(error?.message).to.match(/line 2 is corrupt/);
  });

  describe('durability', () => {
    const good = '{"t":"refused","txnId":"a"}\n{"t":"refused","txnId":"b"}\n';

    it('cuts a torn tail off by renaming a synced copy over the log, never by rewriting it in place', async () => {
      const file = path.join(dir, 'txn.log');
      await fs.writeFile(file, `${good}{"t":"refu`);
      // The file as it was: a rewrite in place (truncate, then write) would change this very inode,
      // and a crash between the truncate and the write would lose entries that were fsynced long ago.
      const before = await fs.open(file, 'r');
      try {
        const { disk, events } = recordingDisk(dir);
        expect(ids(await new TxnLog(dir, { disk }).replay())).to.deep.equal(['a', 'b']);
        expect(await before.readFile('utf8'), 'the old inode was rewritten in place').to.equal(`${good}{"t":"refu`);
        expect(readFileSync(file, 'utf8')).to.equal(good);
        // The copy is synced while the log still holds the old content; the directory after the rename.
        expect(events).to.deep.equal([
          { kind: 'file', name: 'txn.log.tmp', logThen: `${good}{"t":"refu` },
          { kind: 'dir', name: '.', logThen: good },
        ]);
        expect(existsSync(`${file}.tmp`)).to.equal(false);
      } finally {
        await before.close();
      }
    });

    it('leaves an intact log alone', async () => {
      await fs.writeFile(path.join(dir, 'txn.log'), good);
      const { disk, events } = recordingDisk(dir);
      expect(ids(await new TxnLog(dir, { disk }).replay())).to.deep.equal(['a', 'b']);
      expect(events).to.deep.equal([]);
    });

    it('syncs the data directory after creating a new txn.log, so its name survives power loss', async () => {
      const { disk, events } = recordingDisk(dir);
      const log = new TxnLog(dir, { disk });
      await log.open();
      await log.close();
      expect(events).to.deep.equal([{ kind: 'dir', name: '.', logThen: '' }]);
    });
  });

  describe('rewrite (checkpoint)', () => {
    it('replaces the whole log with the given entries, and later appends follow them', async () => {
      const { disk, events } = recordingDisk(dir);
      const log = new TxnLog(dir, { disk });
      await log.open();
      for (const id of ['a', 'b', 'c']) await log.append(refused(id));
      events.length = 0;
      await log.rewrite([refused('checkpoint')]);
      await log.append(refused('d'));
      await log.close();
      expect(ids(await new TxnLog(dir).replay())).to.deep.equal(['checkpoint', 'd']);
      // Synced as a copy while the old log still stood, then renamed over it, then the directory synced.
      const old = ['a', 'b', 'c'].map((id) => JSON.stringify(refused(id)) + '\n').join('');
      expect(events).to.deep.equal([
        { kind: 'file', name: 'txn.log.tmp', logThen: old },
        { kind: 'dir', name: '.', logThen: JSON.stringify(refused('checkpoint')) + '\n' },
      ]);
    });

    it('neither loses nor duplicates appends made while a rewrite is under way, and keeps their order', async () => {
      const { disk, hold } = recordingDisk(dir);
      const log = new TxnLog(dir, { disk });
      await log.open();
      await log.append(refused('old'));
      let release!: () => void;
      const reached = hold(new Promise<void>((r) => (release = r)));
      const rewritten = log.rewrite([refused('checkpoint')]);
      await reached; // the rewrite is syncing its copy
      const durable: string[] = [];
      const during = Array.from({ length: 20 }, (_, i) => log.append(refused(`during-${i}`)).then(() => durable.push(`during-${i}`)));
      // None of them is acknowledged before the rewrite is done: they belong in the new file.
      await Promise.resolve();
      expect(durable).to.deep.equal([]);
      release();
      await rewritten;
      await Promise.all(during);
      await log.append(refused('after'));
      await log.close();
      const expected = ['checkpoint', ...Array.from({ length: 20 }, (_, i) => `during-${i}`), 'after'];
      expect(ids(await new TxnLog(dir).replay())).to.deep.equal(expected);
    });

    it('completes appends made before the rewrite in the old log first, then swaps', async () => {
      const log = new TxnLog(dir);
      await log.open();
      const before = Array.from({ length: 10 }, (_, i) => log.append(refused(`before-${i}`)));
      const rewritten = log.rewrite([refused('checkpoint')]);
      await Promise.all([...before, rewritten]);
      await log.append(refused('after'));
      await log.close();
      expect(ids(await new TxnLog(dir).replay())).to.deep.equal(['checkpoint', 'after']);
    });

    it('keeps the old log, and keeps appending to it, when the rewrite fails before its rename', async () => {
      const failing: DiskSync = {
        ...realDiskSync,
        async syncFile(handle, file) {
          if (file.endsWith('.tmp')) throw Object.assign(new Error('EIO: injected'), { code: 'EIO' });
          return realDiskSync.syncFile(handle, file);
        },
      };
      const log = new TxnLog(dir, { disk: failing });
      await log.open();
      await log.append(refused('a'));
      let error: Error | undefined;
      await log.rewrite([refused('checkpoint')]).catch((err: Error) => (error = err));
      expect(error?.message).to.match(/EIO/);
      await log.append(refused('b'));
      await log.close();
      expect(ids(await new TxnLog(dir).replay())).to.deep.equal(['a', 'b']);
    });
  });
});
