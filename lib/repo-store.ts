import { promises as fs } from 'node:fs';
import path from 'node:path';
import { runGit } from './git.js';

// Where repositories live on disk, and the file-system half of create and delete.
//
//   DATA_DIR/repos/<owner>/<name>.git   served: the only tree node-git-server ever sees
//   DATA_DIR/staging/<txnId>.git        prepared creates: complete bare repos, invisible and unclonable
//   DATA_DIR/trash/<id>                 deleted repos on their way out
//   DATA_DIR/template.git               made once by `git init --bare`; every create copies it
//
// Commit is a rename, so a repo appears whole or not at all. Every step is idempotent: a commit
// replayed after a crash finds the repo already in place and the staging gone, and does nothing.

export const INITIAL_BRANCH = 'main';

export class RepoStore {
  readonly reposRoot: string;
  private readonly stagingRoot: string;
  private readonly trashRoot: string;
  private readonly templateDir: string;
  private readonly incomingRoot: string;
  private readonly outgoingRoot: string;
  /** The template's tree, read once: writing these few entries is several times faster than fs.cp. */
  private templateEntries: { rel: string; content?: Buffer }[] = [];

  constructor(dataDir: string) {
    this.reposRoot = path.join(dataDir, 'repos');
    this.stagingRoot = path.join(dataDir, 'staging');
    this.trashRoot = path.join(dataDir, 'trash');
    this.templateDir = path.join(dataDir, 'template.git');
    this.incomingRoot = path.join(dataDir, 'incoming');
    this.outgoingRoot = path.join(dataDir, 'outgoing');
  }

  /** Creates the layout and the template; removes staging the log does not know about and old trash. */
  async init(keepStaging: ReadonlySet<string>): Promise<void> {
    await Promise.all([this.reposRoot, this.stagingRoot, this.trashRoot, this.incomingRoot, this.outgoingRoot].map((d) => fs.mkdir(d, { recursive: true })));
    try {
      await fs.access(path.join(this.templateDir, 'HEAD'));
    } catch {
      const tmp = `${this.templateDir}.tmp`;
      await fs.rm(tmp, { recursive: true, force: true });
      // An empty --template: no sample hooks or description to copy into every repo.
      await runGit(['init', '--quiet', '--bare', `--initial-branch=${INITIAL_BRANCH}`, '--template=', tmp]);
      await runGit(['config', 'receive.denyDeleteCurrent', 'false'], { cwd: tmp });
      await fs.rename(tmp, this.templateDir);
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
  }

  repoPath(repoId: string): string {
    const [owner, name] = repoId.split('/') as [string, string];
    return path.join(this.reposRoot, owner, `${name}.git`);
  }

  private stagePath(txnId: string): string {
    return path.join(this.stagingRoot, `${txnId}.git`);
  }

  async exists(repoId: string): Promise<boolean> {
    try {
      await fs.access(path.join(this.repoPath(repoId), 'HEAD'));
      return true;
    } catch {
      return false;
    }
  }

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
      // Replayed commit: already renamed into place.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && (await this.exists(repoId))) return;
      throw err;
    }
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
  async sweepIncoming(inUse: (txnId: string) => boolean, idleMs: number, now = Date.now()): Promise<string[]> {
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
  }

  private async materializeTemplate(target: string): Promise<void> {
    await fs.mkdir(target);
    for (const entry of this.templateEntries) {
      const at = path.join(target, entry.rel);
      if (entry.content === undefined) await fs.mkdir(at);
      else await fs.writeFile(at, entry.content);
    }
  }

  private async emptyTrash(): Promise<void> {
    for (const entry of await fs.readdir(this.trashRoot)) {
      await fs.rm(path.join(this.trashRoot, entry), { recursive: true, force: true });
    }
  }
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
