import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs, readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { realDiskSync, type DiskSync } from '../../lib/base/durable-fs.js';
import { RepoStore } from '../../lib/storage/repo-store.js';

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

/** Every directory and file below `root` (root itself included as ''), split by kind. */
async function tree(root: string, rel = ''): Promise<{ dirs: string[]; files: string[] }> {
  const out = { dirs: [rel], files: [] as string[] };
  for (const e of await fs.readdir(path.join(root, rel), { withFileTypes: true })) {
    const child = path.join(rel, e.name);
    if (e.isDirectory()) {
      const sub = await tree(root, child);
      out.dirs.push(...sub.dirs);
      out.files.push(...sub.files);
    } else out.files.push(child);
  }
  return out;
}

describe('repo store: creates survive power loss', () => {
  let root: string;
  let synced: { kind: 'file' | 'dir'; at: string; existed: boolean; watch?: string }[];
  let watch: string | undefined;
  let store: RepoStore;

  // Records every sync, and whether the path being watched (a commit's target) existed at that moment.
  const disk: DiskSync = {
    async syncFile(handle, file) {
      synced.push({ kind: 'file', at: file, existed: watch !== undefined && existsSync(watch) });
      await realDiskSync.syncFile(handle, file);
    },
    async syncDir(dir) {
      await realDiskSync.syncDir(dir);
      synced.push({ kind: 'dir', at: dir, existed: watch !== undefined && existsSync(watch) });
    },
  };

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-store-'));
    synced = [];
    watch = undefined;
    store = new RepoStore(root, { disk });
    await store.init(new Set());
    synced = [];
  });
  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  it('syncs every staged file and directory, and the staging entry, before the stage resolves', async () => {
    await store.stageCreate('node-1-t1');
    const staged = path.join(root, 'staging', 'node-1-t1.git');
    const { dirs, files } = await tree(staged);
    expect(files).to.include('HEAD');
    const syncedFiles = synced.filter((s) => s.kind === 'file').map((s) => path.relative(staged, s.at));
    const syncedDirs = synced.filter((s) => s.kind === 'dir').map((s) => s.at);
    expect([...syncedFiles].sort()).to.deep.equal([...files].sort());
    expect(syncedDirs).to.include.members([...dirs.map((d) => path.join(staged, d)), path.join(root, 'staging')]);
  });

  it('syncs the parent directories after the commit rename', async () => {
    await store.stageCreate('node-1-t2');
    synced = [];
    watch = store.repoPath('owner/fresh');
    await store.commitCreate('node-1-t2', 'owner/fresh');
    const after = synced.filter((s) => s.kind === 'dir' && s.existed).map((s) => s.at);
    // The repo's name in its owner folder, and the owner folder's name (it may be new) in repos/.
    expect(after).to.include.members([path.join(root, 'repos', 'owner'), path.join(root, 'repos')]);
    expect(await store.exists('owner/fresh')).to.equal(true);
  });

  it('a commit replayed after a crash finds the repo in place, and syncs its parents again', async () => {
    await store.stageCreate('node-1-t3');
    await store.commitCreate('node-1-t3', 'owner/replayed');
    synced = [];
    await store.commitCreate('node-1-t3', 'owner/replayed');
    expect(synced.filter((s) => s.kind === 'dir').map((s) => s.at)).to.include(path.join(root, 'repos', 'owner'));
    expect(await store.exists('owner/replayed')).to.equal(true);
  });

  it('recreate syncs the fresh repo, then its parent after the rename', async () => {
    watch = store.repoPath('owner/again');
    await store.recreate('owner/again', 'repair');
    const target = store.repoPath('owner/again');
    const dirsAfter = synced.filter((s) => s.kind === 'dir' && s.existed).map((s) => s.at);
    expect(dirsAfter).to.include(path.dirname(target));
    const filesBefore = synced.filter((s) => s.kind === 'file' && !s.existed).map((s) => path.basename(s.at));
    expect(filesBefore).to.include('HEAD');
    expect(await store.exists('owner/again')).to.equal(true);
  });
});

describe('repo store: exists', () => {
  let root: string;
  let store: RepoStore;
  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-store-'));
    store = new RepoStore(root);
    await store.init(new Set());
    await store.stageCreate('t');
    await store.commitCreate('t', 'o/r');
  });
  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  it('accepts a whole repo, with a symbolic or a detached HEAD', async () => {
    expect(await store.exists('o/r')).to.equal(true);
    await fs.writeFile(path.join(store.repoPath('o/r'), 'HEAD'), `${'a'.repeat(40)}\n`);
    expect(await store.exists('o/r')).to.equal(true);
  });

  // What a power cut after an unsynced create can leave: the name is there, the content is not.
  for (const [what, head] of [
    ['an empty HEAD', ''],
    ['a HEAD of zeros (a file whose data never reached the disk)', '\0'.repeat(21)],
    ['a HEAD that is not a HEAD line', 'garbage\n'],
  ] as const) {
    it(`rejects a repo with ${what}`, async () => {
      await fs.writeFile(path.join(store.repoPath('o/r'), 'HEAD'), head);
      expect(await store.exists('o/r')).to.equal(false);
    });
  }

  it('rebuilds a create template that a power cut left without a valid HEAD, so new repos are whole', async () => {
    await fs.writeFile(path.join(root, 'template.git', 'HEAD'), '');
    const again = new RepoStore(root);
    await again.init(new Set());
    await again.stageCreate('t2');
    await again.commitCreate('t2', 'o/after');
    expect(await again.exists('o/after')).to.equal(true);
  });

  it('rejects a repo without HEAD, objects/ or refs/', async () => {
    await fs.rm(path.join(store.repoPath('o/r'), 'refs'), { recursive: true });
    expect(await store.exists('o/r')).to.equal(false);
    expect(await store.exists('o/missing')).to.equal(false);
  });
});

describe('repo store: what dead gits left behind', () => {
  let root: string;
  let store: RepoStore;
  let repo: string;
  const children: ChildProcess[] = [];

  beforeEach(async () => {
    root = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'qg-store-')));
    store = new RepoStore(root);
    await store.init(new Set());
    await store.stageCreate('t');
    await store.commitCreate('t', 'o/r');
    repo = store.repoPath('o/r');
  });
  afterEach(async () => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
    await fs.rm(root, { recursive: true, force: true });
  });

  /** A git that waits on its stdin forever, as a receive-pack orphaned by its node's SIGKILL would. */
  function leftoverGit(cwd: string, env: NodeJS.ProcessEnv = {}): { child: ChildProcess; exited: Promise<NodeJS.Signals | null> } {
    const child = spawn('git', ['cat-file', '--batch'], { cwd, env: { ...process.env, ...env }, stdio: ['pipe', 'ignore', 'ignore'] });
    children.push(child);
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    return { child, exited };
  }

  /** Waits until /proc shows the child with its working directory (spawn returns before exec). */
  async function running(child: ChildProcess, cwd: string): Promise<void> {
    for (let i = 0; i < 200; i += 1) {
      try {
        if (readlinkSync(`/proc/${child.pid}/cwd`) === cwd && readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').startsWith('git')) return;
      } catch {
        // not there yet
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`git ${child.pid} never started in ${cwd}`);
  }

  it('removes ref, HEAD, packed-refs, config and shallow locks and orphaned quarantines, and nothing else', async () => {
    const planted = [
      'refs/heads/main.lock',
      'refs/heads/feature/x.lock',
      'refs/tags/v1.lock',
      'HEAD.lock',
      'packed-refs.lock',
      'config.lock',
      'shallow.lock',
      'objects/info/commit-graph.lock',
      'gc.pid',
    ];
    await fs.mkdir(path.join(repo, 'refs/heads/feature'), { recursive: true });
    for (const rel of planted) await fs.writeFile(path.join(repo, rel), `${'b'.repeat(40)}\n`);
    await fs.writeFile(path.join(repo, 'refs/heads/main'), `${'c'.repeat(40)}\n`);
    for (const q of ['objects/tmp_objdir-incoming-Ab12Cd', 'objects/incoming-Xy34Zw']) {
      await fs.mkdir(path.join(repo, q, 'pack'), { recursive: true });
      await fs.writeFile(path.join(repo, q, 'pack', 'tmp_pack_123'), 'half a pack');
    }
    const before = (await tree(repo)).files.filter((f) => !f.endsWith('.lock') && f !== 'gc.pid' && !f.includes('incoming-')).sort();

    const removed = await store.clearStaleLocks();

    const expected = [...planted, 'objects/tmp_objdir-incoming-Ab12Cd', 'objects/incoming-Xy34Zw'].map((rel) => path.join(repo, rel));
    expect([...removed].sort()).to.deep.equal(expected.sort());
    expect((await tree(repo)).files.sort()).to.deep.equal(before);
    expect(readFileSync(path.join(repo, 'refs/heads/main'), 'utf8')).to.equal(`${'c'.repeat(40)}\n`);
    expect(await store.clearStaleLocks()).to.deep.equal([]);
  });

  it('kills leftover gits working in its repos (by cwd or GIT_DIR) before it removes their locks, and no others', async () => {
    const inRepo = leftoverGit(repo);
    const byGitDir = leftoverGit(os.tmpdir(), { GIT_DIR: repo });
    // A git of the same node outside repos/ (the create template) is none of its business.
    const elsewhere = path.join(root, 'template.git');
    const other = leftoverGit(elsewhere);
    await running(inRepo.child, repo);
    await running(byGitDir.child, await fs.realpath(os.tmpdir()));
    await running(other.child, elsewhere);
    await fs.writeFile(path.join(repo, 'HEAD.lock'), 'ref: refs/heads/x\n');

    const removed = await store.clearStaleLocks();

    expect(await inRepo.exited).to.equal('SIGKILL');
    expect(await byGitDir.exited).to.equal('SIGKILL');
    expect(removed).to.deep.equal([path.join(repo, 'HEAD.lock')]);
    expect(other.child.exitCode, 'a git outside the repos root').to.equal(null);
    expect(other.child.signalCode).to.equal(null);
  });

  it('runs at init, before the node starts any git of its own', async () => {
    await fs.writeFile(path.join(repo, 'refs/heads/main.lock'), `${'d'.repeat(40)}\n`);
    const removed = await new RepoStore(root).init(new Set());
    expect(removed).to.deep.equal([path.join(repo, 'refs/heads/main.lock')]);
    expect(existsSync(path.join(repo, 'refs/heads/main.lock'))).to.equal(false);
  });
});
