import { spawn, type ChildProcess } from 'node:child_process';
import { type Dirent, closeSync, existsSync, fsyncSync, mkdirSync, openSync, promises as fs, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { sleep, type Clock } from '../base/clock.js';
import { runGit } from './git.js';
import { isPrivateRef } from '../core/repo-id.js';
import { ZERO_OID, type RefUpdate } from '../core/txn-core.js';
import { syncDir } from '../base/durable-fs.js';
import { GIT_FSYNC_WITHOUT_REFS, addGitConfig } from './hooks.js';

// Reading and moving refs of a bare repo with the real git, and installing shipped packs.


export async function readRefs(repoPath: string): Promise<Record<string, string>> {
  const out = await runGit(['for-each-ref', '--format=%(objectname) %(refname)'], { cwd: repoPath });
  const refs: Record<string, string> = {};
  for (const line of out.split('\n')) {
    if (line === '') continue;
    const space = line.indexOf(' ');
    const ref = line.slice(space + 1);
    if (!isPrivateRef(ref)) refs[ref] = line.slice(0, space);
  }
  return refs;
}

const OID = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const SYNC_REF_READS = 32;
const READ_BATCH = 32;

/**
 * The values of some refs, read from the files backend directly (a loose ref file, else packed-refs):
 * a push's prepare runs this on every peer, and it saves a git process there. Anything unusual (a
 * symbolic ref, an odd name) is left to git.
 */
export async function readRefValues(repoPath: string, refs: readonly string[]): Promise<Record<string, string>> {
  if (refs.some((ref) => !ref.startsWith('refs/') || ref.split('/').some((part) => part === '..' || part === '.' || part === ''))) {
    return pick(await readRefs(repoPath), refs);
  }
  // A loose ref is a 41-byte file: a few are read synchronously (a thread-pool round trip each would
  // cost more than the read); more are read without blocking the node, READ_BATCH at a time (one
  // after another, the 501 refs of a full push took 40-57 ms of each replica's prepare).
  const read = async (ref: string): Promise<string | undefined> => {
    const file = path.join(repoPath, ref);
    try {
      return refs.length <= SYNC_REF_READS ? readFileSync(file, 'utf8') : await fs.readFile(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'EISDIR' && code !== 'ENOTDIR') throw err;
      return undefined;
    }
  };
  const out: Record<string, string> = {};
  let packed: Map<string, string> | undefined;
  for (let i = 0; i < refs.length; i += READ_BATCH) {
    const batch = refs.slice(i, i + READ_BATCH);
    const texts = await Promise.all(batch.map(read));
    for (const [j, ref] of batch.entries()) {
      const text = texts[j];
      if (text !== undefined) {
        const oid = text.trim();
        if (!OID.test(oid)) return pick(await readRefs(repoPath), refs);
        out[ref] = oid;
        continue;
      }
      packed ??= await readPackedRefs(repoPath);
      const oid = packed.get(ref);
      if (oid !== undefined) out[ref] = oid;
    }
  }
  return out;
}

/** A name component git's files backend lists as is (a leading dot or a `.lock` ending git skips). */
const PLAIN_REF_PART = /^[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*$/;
/**
 * Beyond this many loose ref files git lists them faster than reading each file from Node (a
 * thread-pool round trip per open, read and close): a digest of a repo with 5,000 loose branches
 * took 1.3 s that way on a loaded node, against tens of milliseconds for `git for-each-ref`.
 */
const MAX_LOOSE_REF_FILES = 64;

/**
 * Every entry under the repo's refs/ directory, depth first, each directory given before what it
 * holds (`ref` is its path from the repo, e.g. refs/heads/main); a directory that is gone is empty.
 * The caller stops the walk by leaving its loop.
 */
async function* looseRefEntries(repoPath: string, dir = 'refs'): AsyncGenerator<{ ref: string; entry: Dirent }> {
  let entries: Dirent[];
  try {
    entries = await fs.readdir(path.join(repoPath, dir), { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const entry of entries) {
    const ref = `${dir}/${entry.name}`;
    yield { ref, entry };
    if (entry.isDirectory()) yield* looseRefEntries(repoPath, ref);
  }
}

/**
 * Every ref (private ones left out, as readRefs), read from the files backend directly: the loose ref
 * files under refs/, then packed-refs, a loose ref winning. The divergence check reads a repo's refs
 * here and on every peer every few seconds, and a git process each (as readRefs) kept an idle 3-node
 * cluster with 25 repos busy on both cores of the 2-core test machine (at the specs' 1 s interval).
 * Loose files are read before packed-refs, so a concurrent `git pack-refs` (which writes packed-refs,
 * then removes the loose files) cannot hide a ref. Anything unusual (a symbolic ref, a name git might
 * not take, a lock file), and more than MAX_LOOSE_REF_FILES loose refs, is left to git. One
 * difference from git's listing: a ref whose object is missing (a damaged replica) is listed here,
 * where git leaves it out with a warning; a replica with one may then show as diverged from a peer
 * whose refs git listed, and its repair is skipped (the copy's refs are listed by git), so it is
 * reported, not hidden.
 */
export async function readRefFiles(repoPath: string): Promise<Record<string, string>> {
  const loose = new Map<string, string>();
  const files: string[] = [];
  // Listed first, read only if there are few.
  const plain = async (): Promise<boolean> => {
    for await (const { ref, entry } of looseRefEntries(repoPath)) {
      if (!PLAIN_REF_PART.test(entry.name) || entry.name.endsWith('.lock')) return false;
      if (!entry.isDirectory() && (!entry.isFile() || files.push(ref) > MAX_LOOSE_REF_FILES)) return false;
    }
    return true;
  };
  if (!(await plain())) return readRefs(repoPath);
  // At most MAX_LOOSE_REF_FILES files of 41 bytes: read synchronously (about a millisecond in all),
  // as readRefValues reads a few.
  for (const ref of files) {
    let text: string;
    try {
      text = readFileSync(path.join(repoPath, ref), 'utf8');
    } catch (err) {
      // Deleted since it was listed: packed-refs, read next, has it or it is gone.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    // Parsed as readRefValues parses a loose ref; anything else is git's to read.
    const oid = text.trim();
    if (!OID.test(oid)) return readRefs(repoPath);
    loose.set(ref, oid);
  }
  const refs: Record<string, string> = {};
  for (const [ref, oid] of await readPackedRefs(repoPath)) if (!loose.has(ref) && !isPrivateRef(ref)) refs[ref] = oid;
  for (const [ref, oid] of loose) if (!isPrivateRef(ref)) refs[ref] = oid;
  return refs;
}

/**
 * How many loose ref files the repo holds under refs/, counted up to `limit` (the walk stops there:
 * a repo of a million loose refs is not listed to learn that it holds more than a hundred). Lock
 * files are not refs. Maintenance packs the refs beyond a threshold (lib/git/maintenance.ts).
 */
export async function countLooseRefs(repoPath: string, limit: number): Promise<number> {
  let count = 0;
  if (limit <= 0) return 0;
  for await (const { entry } of looseRefEntries(repoPath)) {
    if (entry.isFile() && !entry.name.endsWith('.lock')) count += 1;
    if (count >= limit) break;
  }
  return count;
}

/** The size of the repo's packed-refs file in bytes (0 when it has none). */
export async function packedRefsBytes(repoPath: string): Promise<number> {
  try {
    return (await fs.stat(path.join(repoPath, 'packed-refs'))).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
}

function pick(all: Record<string, string>, refs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const ref of refs) if (all[ref] !== undefined) out[ref] = all[ref];
  return out;
}

async function readPackedRefs(repoPath: string): Promise<Map<string, string>> {
  const packed = new Map<string, string>();
  let text: string;
  try {
    text = await fs.readFile(path.join(repoPath, 'packed-refs'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return packed;
    throw err;
  }
  // "<oid> <ref>" lines; '#' starts the header, '^' a peeled value of the tag above.
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#') || line.startsWith('^')) continue;
    const space = line.indexOf(' ');
    packed.set(line.slice(space + 1), line.slice(0, space));
  }
  return packed;
}

/**
 * The ref HEAD names. A bare repo's HEAD is a one-line file; reading it saves a git process per push
 * (and reading it synchronously a thread-pool round trip).
 */
export async function readHead(repoPath: string): Promise<string> {
  const text = readFileSync(path.join(repoPath, 'HEAD'), 'utf8');
  const m = /^ref: (refs\/\S+)\s*$/.exec(text);
  if (m) return m[1]!;
  return (await runGit(['symbolic-ref', 'HEAD'], { cwd: repoPath })).trim();
}

export async function setHead(repoPath: string, ref: string): Promise<void> {
  await runGit(['symbolic-ref', 'HEAD', ref], { cwd: repoPath });
}

export class RefConflictError extends Error {
  constructor(readonly ref: string, readonly found: string, readonly expected: string) {
    super(`${ref} is at ${found}, expected ${expected}`);
    this.name = 'RefConflictError';
  }
}

/** The `update-ref --stdin` line for one update; a zero old value means "must not exist". */
export function refEdit(u: RefUpdate): string {
  return u.new === ZERO_OID ? `delete ${u.ref} ${u.old}` : `update ${u.ref} ${u.new} ${u.old}`;
}

/**
 * Moves refs to the updates' new values in one `git update-ref --stdin` transaction (all or none).
 * Idempotent: refs already at their new value are left alone, so a replayed commit is harmless (and
 * the coordinator's replica, whose refs receive-pack has just moved, starts no git at all); a ref at
 * neither its old nor its new value is a divergence and nothing is changed.
 */
export async function applyUpdates(repoPath: string, updates: readonly RefUpdate[], head?: string): Promise<void> {
  const current = await readRefValues(repoPath, updates.map((u) => u.ref));
  const lines: string[] = [];
  for (const u of updates) {
    const found = current[u.ref] ?? ZERO_OID;
    if (found === u.new) continue;
    if (found !== u.old) throw new RefConflictError(u.ref, found, u.old);
    lines.push(refEdit(u));
  }
  // update-ref checks every old value again, under its locks.
  if (lines.length > 0) await applyRefEdits(repoPath, lines);
  if (head !== undefined && (await readHead(repoPath)) !== head) await setHead(repoPath, head);
}

/**
 * Throws if a ref of `refs` stays locked (a `<ref>.lock` file) for `waitMs`: the coordinator's own
 * replica of a push of few refs is moved by receive-pack after the hook, and a lock left there by a
 * crashed git would make it refuse the push after the peers had committed it. A git that holds a
 * lock for a moment (gc packing refs) lets go well within the wait, as git's own lock retry expects.
 */
export async function expectRefsUnlocked(repoPath: string, refs: readonly string[], waitMs: number, clock: Clock): Promise<void> {
  const deadline = clock.now() + waitMs;
  for (;;) {
    const locked = refs.filter((ref) => existsSync(path.join(repoPath, `${ref}.lock`)));
    if (locked.length === 0) return;
    if (clock.now() >= deadline) throw new Error(`ref locked by another git (a stale lock file?): ${locked.map((r) => `${r}.lock`).join(', ')}`);
    await sleep(clock, 10);
  }
}

/** Runs `update-ref --stdin` commands (create/update/delete lines) as one transaction. */
export async function applyRefEdits(repoPath: string, edits: readonly string[]): Promise<void> {
  const session = new UpdateRefSession(repoPath);
  try {
    await session.send(['start', ...edits, 'prepare', 'commit'], 3);
  } finally {
    session.close();
  }
}

/**
 * The command line of an UpdateRefSession's git, as /proc shows it: what the process checks (chaos
 * run, specs) recognize as a node's idle session kept for the next push, not a git left behind.
 */
export const UPDATE_REF_SESSION_COMMAND = /^git update-ref --stdin$/;

/**
 * A running `git update-ref --stdin`, driven a transaction at a time: `send` writes commands and
 * resolves once as many of them as asked answered "<command>: ok" (start, prepare, commit and abort
 * do); a refusal makes git exit, which rejects what is waiting with git's message. `close` ends the
 * session, and git aborts a transaction left open (its locks removed).
 */
export class UpdateRefSession {
  readonly repoPath: string;
  /** Started without git's fsync of ref lock files. */
  readonly syncsLocks: boolean;
  /** Resolves once git has exited (its open transaction, if any, aborted and its locks removed). */
  readonly exited: Promise<void>;
  private readonly child: ChildProcess;
  private readonly waiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  private stdout = '';
  private stderr = '';
  private ended = false;

  /**
   * `syncsLocks`: git does not fsync the lock files it writes (it does by the node's core.fsync); the
   * caller makes them durable itself before they are renamed (lib/git/ref-txn.ts). `quarantine`:
   * git also finds objects there, ahead of the repo's (receive-pack's quarantine before it moves the
   * pushed objects in; '' for none). Both set through the environment, so the command line stays
   * UPDATE_REF_SESSION_COMMAND.
   */
  constructor(repoPath: string, options: { syncsLocks?: boolean; quarantine?: string } = {}) {
    this.repoPath = repoPath;
    this.syncsLocks = options.syncsLocks ?? false;
    let env: NodeJS.ProcessEnv | undefined;
    if (this.syncsLocks || options.quarantine) {
      env = { ...process.env };
      if (this.syncsLocks) addGitConfig(env, [['core.fsync', GIT_FSYNC_WITHOUT_REFS]]);
      if (options.quarantine) {
        env.GIT_OBJECT_DIRECTORY = options.quarantine;
        env.GIT_ALTERNATE_OBJECT_DIRECTORIES = path.join(repoPath, 'objects');
      }
    }
    this.child = spawn('git', ['update-ref', '--stdin'], { cwd: repoPath, stdio: ['pipe', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    this.child.stdout!.on('data', (chunk: Buffer) => {
      this.stdout += chunk.toString();
      let nl: number;
      while ((nl = this.stdout.indexOf('\n')) >= 0) {
        const line = this.stdout.slice(0, nl);
        this.stdout = this.stdout.slice(nl + 1);
        if (line.endsWith(': ok')) this.waiters.shift()?.resolve();
      }
    });
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr = (this.stderr + chunk.toString()).slice(-4000)));
    this.child.stdin!.on('error', () => undefined);
    let exited!: () => void;
    this.exited = new Promise((resolve) => (exited = resolve));
    const ended = (why: string): void => {
      this.ended = true;
      exited();
      const err = new Error(`git update-ref failed: ${this.stderr.trim() || why}`);
      for (const w of this.waiters.splice(0)) w.reject(err);
    };
    this.child.on('error', (err) => ended(err.message));
    this.child.on('close', (code, signal) => ended(`exited (${signal ?? code})`));
  }

  get alive(): boolean {
    return !this.ended;
  }

  send(lines: readonly string[], answers: number): Promise<void> {
    if (this.ended) return Promise.reject(new Error(`git update-ref failed: ${this.stderr.trim() || 'session ended'}`));
    const done = Array.from({ length: answers }, () => new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject })));
    this.child.stdin!.write(lines.join('\n') + '\n');
    return Promise.all(done).then(() => undefined);
  }

  close(): void {
    this.child.stdin!.end();
  }
}

export const PACK_FILE = /^pack-[0-9a-f]{40,64}\.(pack|idx|rev)$/;

/** The pack files receive-pack wrote into its quarantine (receive.unpackLimit=1 makes it always one pack). */
export async function quarantinePackFiles(quarantine: string): Promise<string[]> {
  let names: string[];
  try {
    names = readdirSync(path.join(quarantine, 'pack'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names.filter((n) => PACK_FILE.test(n)).map((n) => path.join(quarantine, 'pack', n));
}

/**
 * What a peer's .keep file for a push's pack says: git's repack and gc leave a kept pack alone. git
 * keeps its own new packs so (receive-pack's and fetch's index-pack --keep, until their refs are
 * moved); a peer's pack, installed at prepare and named by refs only at commit, needs the same: a
 * background `gc --auto` between the two listed the new .pack before its .idx was there (repack lists
 * *.pack files), so pack-objects never saw it, did not keep its objects, and repack deleted it; the
 * commit then moved a ref onto objects that were gone.
 */
function keepNote(txnId: string): string {
  return `quorum-git push ${txnId}\n`;
}

/** pack-<hash>.keep for one of a pack's files. */
function keepFileFor(packDir: string, name: string): string {
  return path.join(packDir, name.replace(/\.(pack|idx|rev)$/, '.keep'));
}

/**
 * Writes a small pack that came inside a prepare straight into the repo's object store, kept for
 * `txnId` (releasePackKeeps): the .keep first, then the .pack (and .rev) under their names, the .idx
 * last through a temporary name, since git finds a pack only through a complete index. The writes
 * are synchronous on purpose: the files are small (the inline limit bounds them), and on a busy node
 * each thread-pool round trip of an async write cost more than the write itself, on every peer's
 * vote of every push.
 */
export function installPackBuffers(repoPath: string, files: Readonly<Record<string, Buffer>>, txnId: string): void {
  const packDir = path.join(repoPath, 'objects', 'pack');
  mkdirSync(packDir, { recursive: true });
  const names = Object.keys(files).filter((n) => PACK_FILE.test(n));
  // Durable before the vote: each file fsynced, then the directory that names them.
  for (const n of names.filter((n) => n.endsWith('.pack'))) writeFileSync(keepFileFor(packDir, n), keepNote(txnId), { flush: true });
  for (const n of names) if (!n.endsWith('.idx')) writeFileSync(path.join(packDir, n), files[n]!, { flush: true });
  for (const n of names.filter((n) => n.endsWith('.idx'))) {
    writeFileSync(path.join(packDir, `tmp_${n}`), files[n]!, { flush: true });
    renameSync(path.join(packDir, `tmp_${n}`), path.join(packDir, n));
  }
  const dir = openSync(packDir, 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/**
 * Moves shipped pack files into the repo's object store, kept for `txnId` like installPackBuffers:
 * the .keep first, then the .pack (and .rev), the .idx last, since git finds a pack through its
 * index. Objects present but unreferenced change nothing visible. The emptied directory goes too:
 * otherwise every push would leave one behind on every peer.
 */
export async function installPackFiles(repoPath: string, dir: string, txnId: string): Promise<void> {
  let names: string[];
  try {
    names = (await fs.readdir(dir)).filter((n) => PACK_FILE.test(n));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const order = (n: string): number => (n.endsWith('.idx') ? 1 : 0);
  names.sort((a, b) => order(a) - order(b));
  const packDir = path.join(repoPath, 'objects', 'pack');
  await fs.mkdir(packDir, { recursive: true });
  for (const name of names.filter((n) => n.endsWith('.pack'))) await fs.writeFile(keepFileFor(packDir, name), keepNote(txnId), { flush: true });
  for (const name of names) await fs.rename(path.join(dir, name), path.join(packDir, name));
  // The files were fsynced as they arrived; their new names must survive a power loss too.
  await syncDir(packDir);
  await fs.rm(dir, { recursive: true, force: true });
}

/**
 * Removes the .keep files of the packs installed for `txnId`, once its push is applied (its refs name
 * the objects) or dropped (unreferenced, they then go the way of any unreachable object). Returns the
 * files removed.
 */
export async function releasePackKeeps(repoPath: string, txnId: string): Promise<string[]> {
  const mine = (await listPackKeeps(repoPath)).filter((k) => k.txnId === txnId).map((k) => k.file);
  await Promise.all(mine.map((file) => fs.rm(file, { force: true })));
  return mine;
}

/** This node's push keeps in a repo (git's own keeps, receive-pack's and fetch's, and an operator's are not listed). */
export async function listPackKeeps(repoPath: string): Promise<{ file: string; txnId: string }[]> {
  const packDir = path.join(repoPath, 'objects', 'pack');
  const keeps: { file: string; txnId: string }[] = [];
  for (const name of await fs.readdir(packDir).catch(() => [] as string[])) {
    if (!/^pack-[0-9a-f]{40,64}\.keep$/.test(name)) continue;
    const file = path.join(packDir, name);
    const m = /^quorum-git push (\S+)\n$/.exec(await fs.readFile(file, 'utf8').catch(() => ''));
    if (m) keeps.push({ file, txnId: m[1]! });
  }
  return keeps;
}

// ---------------------------------------------------------------------------------------------
// Catch-up's private refs, and what moving refs would leave unreachable.


/** Every ref below `prefix` (which ends in '/'), full names, with its value. */
export async function readRefsUnder(repoPath: string, prefix: string): Promise<Record<string, string>> {
  return parseForEachRef(await runGit(['for-each-ref', '--format=%(objectname) %(refname)', prefix], { cwd: repoPath }));
}

/** `git for-each-ref --format='%(objectname) %(refname)'` output as ref -> oid. */
export function parseForEachRef(out: string): Record<string, string> {
  const refs: Record<string, string> = {};
  for (const line of out.split('\n')) {
    if (line === '') continue;
    const space = line.indexOf(' ');
    refs[line.slice(space + 1)] = line.slice(0, space);
  }
  return refs;
}

/**
 * Deletes every ref below `prefix` (which ends in '/') in one transaction, each at the value just read.
 * Usually there is none (a catch-up clears the fetch namespace before and after each fetch): that is
 * told from the files without a git process, and only a prefix that may hold refs is listed by git.
 */
export async function deleteRefsUnder(repoPath: string, prefix: string): Promise<void> {
  if (!(await mayHoldRefsUnder(repoPath, prefix))) return;
  const refs = await readRefsUnder(repoPath, prefix);
  const edits = Object.entries(refs).map(([ref, oid]) => `delete ${ref} ${oid}`);
  if (edits.length > 0) await applyRefEdits(repoPath, edits);
}

/**
 * False only when no ref below `prefix` can exist in the files backend: no loose directory for it,
 * and no packed-refs line naming one. Anything it cannot read counts as "may".
 */
async function mayHoldRefsUnder(repoPath: string, prefix: string): Promise<boolean> {
  try {
    await fs.stat(path.join(repoPath, prefix));
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') return true;
  }
  try {
    return [...(await readPackedRefs(repoPath)).keys()].some((ref) => ref.startsWith(prefix));
  } catch {
    return true;
  }
}

/**
 * The objects of `tips` that no object of `keep` reaches: the tips whose refs must be kept aside if
 * only `keep` is to stay referenced. `rev-list --objects` is used rather than a commits-only walk so
 * that an annotated tag whose commit survives, but which itself would not, counts as lost too. Its
 * output (every lost object) is streamed and only compared, never held. A failure rejects: the
 * caller must not take "could not tell" for "nothing lost".
 */
export function unreachableTips(repoPath: string, tips: readonly string[], keep: readonly string[], timeoutMs: number, clock: Clock): Promise<Set<string>> {
  const wanted = new Set(tips);
  const lost = new Set<string>();
  if (wanted.size === 0) return Promise.resolve(lost);
  return new Promise((resolve, reject) => {
    // rev-list of git 2.39 takes no options on stdin; '^<oid>' lines are the "--not" side.
    const child = spawn('git', ['rev-list', '--objects', '--stdin'], { cwd: repoPath, stdio: ['pipe', 'pipe', 'pipe'] });
    let partial = '';
    let stderr = '';
    const timer = clock.setTimeout(() => {
      stderr += `timed out after ${timeoutMs} ms`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        const oid = line.split(' ', 1)[0]!;
        if (wanted.has(oid)) lost.add(oid);
      }
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
    child.on('error', (err) => {
      clock.clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clock.clearTimeout(timer);
      if (code !== 0) return reject(new Error(`git rev-list failed: ${stderr.trim() || `exit ${code}`}`));
      const last = partial.split(' ', 1)[0]!;
      if (wanted.has(last)) lost.add(last);
      resolve(lost);
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end([...wanted, ...keep.map((oid) => `^${oid}`)].join('\n') + '\n');
  });
}
