import { promises as fs } from 'node:fs';
import path from 'node:path';
import { systemClock, type Clock } from '../base/clock.js';
import { realDiskSync, syncFileAt, type DiskSync } from '../base/durable-fs.js';
import { runGit } from '../git/git.js';
import { killLeftoverGits, removeGitLeftovers } from '../git/stale-git.js';

// Where repositories live on disk, and the file-system half of create and delete.
//
//   DATA_DIR/repos/<owner>/<name>.git   served: the only tree smart HTTP ever reads
//   DATA_DIR/staging/<txnId>.git        prepared creates: complete bare repos, invisible and unclonable
//   DATA_DIR/trash/<id>                 deleted repos on their way out
//   DATA_DIR/template.git               made once by `git init --bare`; every create copies it
//
// Commit is a rename, so a repo appears whole or not at all. Every step is idempotent: a commit
// replayed after a crash finds the repo already in place and the staging gone, and does nothing.
// "Whole" holds across power loss too: a stage resolves only once every file and directory it wrote
// is fsynced (the node votes yes after it), and a commit rename is followed by an fsync of the parent
// directories. Without them a power cut could leave a repo whose HEAD is empty; exists() refuses such
// a repo (as git itself would), so start-up recreates it and catch-up refills it.

export const INITIAL_BRANCH = 'main';

export interface RepoStoreOptions {
  /** The fsyncs (real by default); specs record them. */
  disk?: DiskSync;
  /** The node's clock (default the system's): the wait for killed gits, the age of abandoned uploads. */
  clock?: Clock;
}

/** What git accepts in HEAD: a symbolic ref under refs/, or a full object id (SHA-1 or SHA-256). */
const HEAD_LINE = /^(?:ref:\s*refs\/[^\n]*|[0-9a-f]{40}|[0-9a-f]{64})\n?$/;

export class RepoStore {
  readonly reposRoot: string;
  private readonly stagingRoot: string;
  private readonly trashRoot: string;
  private readonly templateDir: string;
  private readonly incomingRoot: string;
  private readonly outgoingRoot: string;
  /** The template's tree, read once: writing these few entries is several times faster than fs.cp. */
  private templateEntries: { rel: string; content?: Buffer }[] = [];
  private readonly disk: DiskSync;
  private readonly clock: Clock;

  constructor(dataDir: string, options: RepoStoreOptions = {}) {
    this.disk = options.disk ?? realDiskSync;
    this.clock = options.clock ?? systemClock;
    this.reposRoot = path.join(dataDir, 'repos');
    this.stagingRoot = path.join(dataDir, 'staging');
    this.trashRoot = path.join(dataDir, 'trash');
    this.templateDir = path.join(dataDir, 'template.git');
    this.incomingRoot = path.join(dataDir, 'incoming');
    this.outgoingRoot = path.join(dataDir, 'outgoing');
  }

  /**
   * Creates the layout and the template; clears what this node's dead gits left in its repos
   * (clearStaleLocks, whose list of removed paths it returns); removes staging the log does not know
   * about and old trash. Runs before the node starts any git in a served repo.
   */
  async init(keepStaging: ReadonlySet<string>): Promise<string[]> {
    await Promise.all([this.reposRoot, this.stagingRoot, this.trashRoot, this.incomingRoot, this.outgoingRoot].map((d) => fs.mkdir(d, { recursive: true })));
    const cleared = await this.clearStaleLocks();
    // Every create copies the template: one left broken by a power cut would break every new repo.
    if (!(await isGitDir(this.templateDir))) {
      const tmp = `${this.templateDir}.tmp`;
      await fs.rm(tmp, { recursive: true, force: true });
      await fs.rm(this.templateDir, { recursive: true, force: true });
      // An empty --template: no sample hooks or description to copy into every repo.
      await runGit(['init', '--quiet', '--bare', `--initial-branch=${INITIAL_BRANCH}`, '--template=', tmp]);
      await runGit(['config', 'receive.denyDeleteCurrent', 'false'], { cwd: tmp });
      const written = await readTree(tmp);
      await Promise.all(written.filter((e) => e.content !== undefined).map((e) => syncFileAt(this.disk, path.join(tmp, e.rel))));
      await Promise.all([tmp, ...written.filter((e) => e.content === undefined).map((e) => path.join(tmp, e.rel))].map((d) => this.disk.syncDir(d)));
      await fs.rename(tmp, this.templateDir);
      await this.disk.syncDir(path.dirname(this.templateDir));
    }
    this.templateEntries = await readTree(this.templateDir);
    for (const root of [this.stagingRoot, this.incomingRoot]) {
      for (const entry of await fs.readdir(root)) {
        if (!keepStaging.has(entry.replace(/\.git$/, ''))) await fs.rm(path.join(root, entry), { recursive: true, force: true });
      }
    }
    await this.emptyTrash();
    await fs.rm(this.outgoingRoot, { recursive: true, force: true });
    await fs.mkdir(this.outgoingRoot);
    return cleared;
  }

  /**
   * Clears what gits that died with this node left in its repos: a git killed while holding
   * `refs/heads/x.lock` or `HEAD.lock` leaves the file, and every later update of that ref fails
   * ("File exists") for good. First SIGKILLs gits still working in this node's repos (an orphaned
   * receive-pack of a node killed alone would otherwise keep or re-take a lock), then removes every
   * lock file git leaves (any `*.lock` at a repo's top, under refs/, objects/info/ and objects/pack/,
   * and gc.pid) and orphaned push quarantines (objects/tmp_objdir-incoming-*, objects/incoming-*).
   * Only safe while no git of this node runs: call it at start, before any. Returns the paths removed.
   */
  async clearStaleLocks(): Promise<string[]> {
    await killLeftoverGits([this.reposRoot, this.trashRoot], this.clock);
    const removed: string[] = [];
    for (const repo of await this.repoDirs()) removed.push(...(await removeGitLeftovers(repo)));
    return removed;
  }

  /** Every served repo's directory: repos/<owner>/<name>.git. */
  async repoDirs(): Promise<string[]> {
    const out: string[] = [];
    for (const owner of await fs.readdir(this.reposRoot, { withFileTypes: true })) {
      if (!owner.isDirectory()) continue;
      for (const repo of await fs.readdir(path.join(this.reposRoot, owner.name), { withFileTypes: true }).catch(() => [])) {
        if (repo.isDirectory() && repo.name.endsWith('.git')) out.push(path.join(this.reposRoot, owner.name, repo.name));
      }
    }
    return out;
  }

  repoPath(repoId: string): string {
    const [owner, name] = repoId.split('/') as [string, string];
    return path.join(this.reposRoot, owner, `${name}.git`);
  }

  private stagePath(txnId: string): string {
    return path.join(this.stagingRoot, `${txnId}.git`);
  }

  /**
   * Whether a repo is served here, by git's own test of a git directory: a valid HEAD line, objects/
   * and refs/. A repo whose create was cut short by a power loss (empty HEAD) is not one.
   */
  exists(repoId: string): Promise<boolean> {
    return isGitDir(this.repoPath(repoId));
  }

  /** Stages a create's repo; resolves once it is durable, so a yes vote never rests on the page cache. */
  async stageCreate(txnId: string): Promise<void> {
    const target = this.stagePath(txnId);
    await fs.rm(target, { recursive: true, force: true });
    await this.materializeTemplate(target);
  }

  async commitCreate(txnId: string, repoId: string): Promise<void> {
    const staged = this.stagePath(txnId);
    const target = this.repoPath(repoId);
    await fs.mkdir(path.dirname(target), { recursive: true });
    try {
      await fs.rename(staged, target);
    } catch (err) {
      // Replayed commit: already renamed into place (perhaps not yet durably: the syncs below follow).
      // Judged by the directory, not exists(): a repo an old, unsynced create left without a valid
      // HEAD is still this commit's, and start-up repairs it (recreate, then catch-up) rather than
      // the commit failing on every replay.
      if (!((err as NodeJS.ErrnoException).code === 'ENOENT' && (await isDirectory(target)))) throw err;
    }
    await this.syncParents(target);
  }

  /**
   * Makes a rename into the served tree durable: the repo's name in its owner folder, and the owner
   * folder's name (it may have just been made) in repos/. The caller logs "committed" only after.
   */
  private async syncParents(target: string): Promise<void> {
    await this.disk.syncDir(path.dirname(target));
    await this.disk.syncDir(this.reposRoot);
  }

  /** Where a peer's shipped pack for a push transaction waits for the prepare. */
  incomingDir(txnId: string): string {
    return path.join(this.incomingRoot, txnId);
  }

  /** Hard links (same file system, no copy) of a push's pack files, for shipping to peers. */
  async linkOutgoing(txnId: string, files: readonly string[]): Promise<string[]> {
    if (files.length === 0) return [];
    const dir = path.join(this.outgoingRoot, txnId);
    await fs.mkdir(dir, { recursive: true });
    const linked: string[] = [];
    for (const file of files) {
      const target = path.join(dir, path.basename(file));
      await fs.link(file, target);
      linked.push(target);
    }
    return linked;
  }

  async dropOutgoing(txnId: string): Promise<void> {
    await fs.rm(path.join(this.outgoingRoot, txnId), { recursive: true, force: true });
  }

  /** Maps a served repo's directory (as git hooks see it) back to its id, or undefined. */
  repoIdOf(dir: string): string | undefined {
    const rel = path.relative(this.reposRoot, path.resolve(dir));
    const m = /^([^/]+)\/([^/]+)\.git$/.exec(rel);
    return m ? `${m[1]}/${m[2]}` : undefined;
  }

  /**
   * Removes shipped packs that no prepare will ever come for: an upload the coordinator gave up on
   * half-way (one file of two arrived, then the connection broke) leaves its directory behind, and
   * the prepare that would install or drop it is never sent. A directory goes once nothing in it has
   * been written for `idleMs` and `inUse` says no transaction here knows it. Returns the ids removed.
   */
  async sweepIncoming(inUse: (txnId: string) => boolean, idleMs: number, now = this.clock.now()): Promise<string[]> {
    const removed: string[] = [];
    for (const txnId of await fs.readdir(this.incomingRoot).catch(() => [] as string[])) {
      if (inUse(txnId)) continue;
      const dir = path.join(this.incomingRoot, txnId);
      let newest = 0;
      try {
        newest = (await fs.stat(dir)).mtimeMs;
        for (const name of await fs.readdir(dir)) newest = Math.max(newest, (await fs.stat(path.join(dir, name))).mtimeMs);
      } catch {
        continue; // installed or discarded meanwhile
      }
      if (now - newest < idleMs) continue;
      await fs.rm(dir, { recursive: true, force: true });
      removed.push(txnId);
    }
    return removed;
  }

  /** Drops whatever a transaction staged: a prepared create, or a push's shipped pack not yet installed. */
  async discard(txnId: string): Promise<void> {
    await fs.rm(this.stagePath(txnId), { recursive: true, force: true });
    await fs.rm(this.incomingDir(txnId), { recursive: true, force: true });
  }

  async remove(repoId: string, reason: string): Promise<void> {
    const source = this.repoPath(repoId);
    const trash = path.join(this.trashRoot, `${reason}-${path.basename(path.dirname(source))}-${path.basename(source)}-${process.hrtime.bigint()}`);
    try {
      await fs.rename(source, trash);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    // The rename is the delete; reclaiming the space may lag behind. Empty owner folders stay: removing
    // one could race a create under the same owner.
    void fs.rm(trash, { recursive: true, force: true }).catch(() => undefined);
  }

  /** Makes a fresh empty repo appear at the repo's path, replacing what was there. */
  async recreate(repoId: string, reason: string): Promise<void> {
    await this.remove(repoId, reason);
    const staged = this.stagePath(`${reason}-${process.hrtime.bigint()}`);
    await this.materializeTemplate(staged);
    await fs.mkdir(path.dirname(this.repoPath(repoId)), { recursive: true });
    await fs.rename(staged, this.repoPath(repoId));
    await this.syncParents(this.repoPath(repoId));
  }

  /**
   * Writes a copy of the template at `target` and makes it durable: every file's content, every
   * directory's entries, and `target`'s own name in its parent. A crash part-way leaves a partial
   * copy under staging/, which init removes (or the next stage of the same txn overwrites).
   */
  private async materializeTemplate(target: string): Promise<void> {
    await fs.mkdir(target);
    const dirs = [target];
    const files: Promise<void>[] = [];
    for (const entry of this.templateEntries) {
      const at = path.join(target, entry.rel);
      if (entry.content === undefined) {
        await fs.mkdir(at);
        dirs.push(at);
      } else files.push(this.writeSynced(at, entry.content));
    }
    await Promise.all(files);
    await Promise.all([...dirs, path.dirname(target)].map((d) => this.disk.syncDir(d)));
  }

  private async writeSynced(file: string, content: Buffer): Promise<void> {
    const handle = await fs.open(file, 'wx');
    try {
      await handle.writeFile(content);
      await this.disk.syncFile(handle, file);
    } finally {
      await handle.close();
    }
  }

  private async emptyTrash(): Promise<void> {
    for (const entry of await fs.readdir(this.trashRoot)) {
      await fs.rm(path.join(this.trashRoot, entry), { recursive: true, force: true });
    }
  }
}

/** git's own test of a git directory (setup.c is_git_directory): a valid HEAD line, objects/, refs/. */
async function isGitDir(dir: string): Promise<boolean> {
  try {
    const [head, objects, refs] = await Promise.all([
      fs.readFile(path.join(dir, 'HEAD'), 'utf8'),
      fs.stat(path.join(dir, 'objects')),
      fs.stat(path.join(dir, 'refs')),
    ]);
    return HEAD_LINE.test(head) && objects.isDirectory() && refs.isDirectory();
  } catch {
    return false;
  }
}

async function isDirectory(p: string): Promise<boolean> {
  return fs.stat(p).then(
    (st) => st.isDirectory(),
    () => false,
  );
}

/** Every directory and file below `root`, parents first, with file contents. */
async function readTree(root: string, rel = ''): Promise<{ rel: string; content?: Buffer }[]> {
  const out: { rel: string; content?: Buffer }[] = [];
  for (const entry of await fs.readdir(path.join(root, rel), { withFileTypes: true })) {
    const child = path.join(rel, entry.name);
    if (entry.isDirectory()) out.push({ rel: child }, ...(await readTree(root, child)));
    else if (entry.isFile()) out.push({ rel: child, content: await fs.readFile(path.join(root, child)) });
  }
  return out;
}
