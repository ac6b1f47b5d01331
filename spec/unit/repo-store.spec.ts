import { expect } from 'chai';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RepoStore } from '../../lib/repo-store.js';

// Shipped packs whose prepare never came (the coordinator gave up on the upload half-way) are swept
// once idle; an upload still being written, or one a transaction here knows, stays.

describe('repo store: abandoned pack uploads', () => {
  let root: string;
  let store: RepoStore;
  const t0 = Date.parse('2026-11-26T12:00:00Z');

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-store-'));
    store = new RepoStore(root);
    await store.init(new Set());
  });
  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  /** An incoming upload whose files were last written `ageMs` before t0. */
  async function upload(txnId: string, ageMs: number): Promise<string> {
    const dir = store.incomingDir(txnId);
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, `pack-${'a'.repeat(40)}.idx`);
    await fs.writeFile(file, 'x');
    const when = new Date(t0 - ageMs);
    await fs.utimes(file, when, when);
    await fs.utimes(dir, when, when);
    return dir;
  }

  it('removes an idle upload no transaction knows, and keeps fresh or known ones', async () => {
    const abandoned = await upload('node-2-old', 60_000);
    const writing = await upload('node-2-new', 1_000);
    const known = await upload('node-2-prepared', 60_000);
    const removed = await store.sweepIncoming((txnId) => txnId === 'node-2-prepared', 10_000, t0);
    expect(removed).to.deep.equal(['node-2-old']);
    expect(existsSync(abandoned)).to.equal(false);
    expect(existsSync(writing)).to.equal(true);
    expect(existsSync(known)).to.equal(true);
  });

  it('judges an upload by its newest file, not by its directory', async () => {
    const dir = await upload('node-3-growing', 60_000);
    const tmp = path.join(dir, `pack-${'b'.repeat(40)}.pack.tmp`);
    await fs.writeFile(tmp, 'still arriving');
    const recent = new Date(t0 - 500);
    await fs.utimes(tmp, recent, recent);
    expect(await store.sweepIncoming(() => false, 10_000, t0)).to.deep.equal([]);
    expect(existsSync(dir)).to.equal(true);
  });
});
