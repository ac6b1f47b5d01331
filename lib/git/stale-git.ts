import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sleep, type Clock } from '../base/clock.js';

// What gits that died with their node leave behind, and how a node clears it at start.
//
// git takes a lock by creating `<file>.lock` with O_EXCL and removes it when done; a git killed in
// between (SIGKILL of the node's process group, a machine crash) leaves it, and every later git that
// wants that lock fails with "File exists" until someone removes it. receive-pack also leaves its
// quarantine directory (objects/tmp_objdir-incoming-*) when killed mid-push. A node SIGKILLed alone
// leaves its gits running as orphans: a receive-pack waiting on its hook, an update-ref session
// holding ref locks. Those are killed first, so that none of them holds, or takes again, a lock that
// is about to be removed.

/** How long killed gits get to be gone before the locks are removed anyway (best effort). */
export const LEFTOVER_GIT_EXIT_TIMEOUT_MS = 5_000;
const EXIT_POLL_INTERVAL_MS = 20;

function inside(p: string, roots: readonly string[]): boolean {
  return roots.some((root) => p === root || p.startsWith(`${root}/`));
}

/** The git processes (Linux /proc) whose working directory or GIT_DIR is inside one of `roots`. */
export async function findLeftoverGits(roots: readonly string[]): Promise<number[]> {
  const resolved = await Promise.all(roots.map((r) => fs.realpath(r).catch(() => path.resolve(r))));
  let entries: string[];
  try {
    entries = await fs.readdir('/proc');
  } catch {
    return []; // not Linux: nothing to find this way
  }
  const found: number[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    try {
      const argv = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
      // git itself and its dashed programs (git-receive-pack, git-upload-pack, ...); not a shell a
      // person left in a repo.
      if (!path.basename(argv[0] ?? '').startsWith('git')) continue;
      const cwd = await fs.readlink(`/proc/${pid}/cwd`);
      let hit = inside(cwd, resolved);
      if (!hit) {
        // `git --git-dir=<dir>` or `git --git-dir <dir>`, as the node's own gits are started.
        const flag = argv.findIndex((a) => a === '--git-dir' || a.startsWith('--git-dir='));
        const gitDir = flag === -1 ? undefined : argv[flag] === '--git-dir' ? argv[flag + 1] : argv[flag]!.slice('--git-dir='.length);
        if (gitDir) hit = inside(path.resolve(cwd, gitDir), resolved);
      }
      if (!hit) {
        const environ = (await fs.readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
        const gitDir = environ.find((v) => v.startsWith('GIT_DIR='))?.slice('GIT_DIR='.length);
        if (gitDir) hit = inside(path.resolve(cwd, gitDir), resolved);
      }
      if (hit) found.push(pid);
    } catch {
      // exited while we looked, or not ours to read (another user's process is not ours to kill)
    }
  }
  return found;
}

function alive(pid: number): Promise<boolean> {
  return fs.readFile(`/proc/${pid}/stat`, 'utf8').then(
    // pid (comm) state ...: a zombie (Z) is dead, only not yet reaped by its parent.
    (stat) => stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z',
    () => false,
  );
}

/**
 * SIGKILLs every git working inside `roots` and waits (up to LEFTOVER_GIT_EXIT_TIMEOUT_MS) until
 * they are gone. Returns the pids killed. A git that outlives the wait (stuck in the kernel) is left
 * to die; its locks are removed regardless, which is no worse than the lock staying forever.
 * It runs at start-up before the node listens, so its waits hold the process open (keepAlive).
 */
export async function killLeftoverGits(roots: readonly string[], clock: Clock, timeoutMs = LEFTOVER_GIT_EXIT_TIMEOUT_MS): Promise<number[]> {
  const pids = await findLeftoverGits(roots);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  const deadline = clock.now() + timeoutMs;
  for (const pid of pids) {
    while ((await alive(pid)) && clock.now() < deadline) await sleep(clock, EXIT_POLL_INTERVAL_MS, { keepAlive: true });
  }
  return pids;
}

/** Lock files git takes outside refs/ that a killed git can leave, besides any `<top-level>.lock`. */
const LOCK_DIRS = ['objects/info', 'objects/pack'];

/**
 * Removes from one bare repo what killed gits left: every `*.lock` at its top (HEAD, packed-refs,
 * config, shallow, ...), under refs/ at any depth, and under objects/info/ and objects/pack/; a stale
 * gc.pid; and receive-pack quarantines (objects/tmp_objdir-incoming-*, objects/incoming-*). Only safe
 * while no git works in the repo. Returns the paths removed.
 */
export async function removeGitLeftovers(repo: string): Promise<string[]> {
  const removed: string[] = [];
  const remove = async (p: string): Promise<void> => {
    await fs.rm(p, { recursive: true, force: true });
    removed.push(p);
  };
  const list = (dir: string): Promise<import('node:fs').Dirent[]> => fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  const locksBelow = async (dir: string, recursive: boolean): Promise<void> => {
    for (const e of await list(dir)) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (recursive) await locksBelow(p, true);
      } else if (e.name.endsWith('.lock')) await remove(p);
    }
  };
  for (const e of await list(repo)) {
    if (!e.isDirectory() && (e.name.endsWith('.lock') || e.name === 'gc.pid')) await remove(path.join(repo, e.name));
  }
  await locksBelow(path.join(repo, 'refs'), true);
  for (const dir of LOCK_DIRS) await locksBelow(path.join(repo, dir), dir === 'objects/info');
  for (const e of await list(path.join(repo, 'objects'))) {
    if (e.isDirectory() && (e.name.startsWith('tmp_objdir-incoming-') || e.name.startsWith('incoming-'))) await remove(path.join(repo, 'objects', e.name));
  }
  return removed;
}
