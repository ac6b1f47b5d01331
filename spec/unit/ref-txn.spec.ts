import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync, promises as fs, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UPDATE_REF_SESSION_COMMAND, readRefValues } from '../../lib/git/git-refs.js';
import { BULK_REF_UPDATES, RefTransactions } from '../../lib/git/ref-txn.js';
import { GIT_FSYNC_WITHOUT_REFS } from '../../lib/git/hooks.js';
import { syncFileSystem } from '../../lib/base/durable-fs.js';
import { systemClock } from '../../lib/base/clock.js';
import { ZERO_OID } from '../../lib/core/txn-core.js';
import type { Logger } from '../../lib/base/logger.js';
import { GitReplica } from '../../lib/storage/replica.js';
import type { RepoStore } from '../../lib/storage/repo-store.js';

// A peer's ref transaction held from prepare to commit, against the real git: the locks exist while
// it is prepared, a commit moves the refs, an abort leaves them, a wrong old value or a missing object
// is refused at prepare, and a session is reused only for the directory it was started in.

describe('ref transactions held from prepare to commit', () => {
  let root: string;
  let repo: string;
  let first: string;
  let second: string;
  let txns: RefTransactions;
  const git = (cwd: string, ...args: string[]): string =>
    execFileSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@a', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@a' } }).trim();
  const lock = (ref: string): string => path.join(repo, `${ref}.lock`);
  const main = async (): Promise<string | undefined> => (await readRefValues(repo, ['refs/heads/main']))['refs/heads/main'];

  async function makeRepo(): Promise<void> {
    await fs.mkdir(repo, { recursive: true });
    git(repo, 'init', '-q', '--bare', '--initial-branch=main', '.');
    const tree = git(repo, 'mktree');
    first = git(repo, 'commit-tree', tree, '-m', 'first');
    second = git(repo, 'commit-tree', tree, '-p', first, '-m', 'second');
    git(repo, 'update-ref', 'refs/heads/main', first);
  }

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-reftxn-'));
    repo = path.join(root, 'r.git');
    await makeRepo();
    txns = new RefTransactions({ maxSpares: 4, idleMs: 60_000 });
  });
  afterEach(async () => {
    txns.close();
    await fs.rm(root, { recursive: true, force: true });
  });

  it('holds the ref locks while prepared, and the commit moves the refs', async () => {
    await txns.prepare('t1', repo, [
      { ref: 'refs/heads/main', old: first, new: second },
      { ref: 'refs/heads/topic', old: ZERO_OID, new: first },
    ]);
    expect(existsSync(lock('refs/heads/main'))).to.equal(true);
    expect(await main()).to.equal(first);
    expect(await txns.commit('t1')).to.equal(true);
    expect(existsSync(lock('refs/heads/main'))).to.equal(false);
    expect(await readRefValues(repo, ['refs/heads/main', 'refs/heads/topic'])).to.deep.equal({ 'refs/heads/main': second, 'refs/heads/topic': first });
  });

  it('an abort releases the locks and changes nothing', async () => {
    await txns.prepare('t1', repo, [{ ref: 'refs/heads/main', old: first, new: second }]);
    await txns.abort('t1');
    expect(existsSync(lock('refs/heads/main'))).to.equal(false);
    expect(await main()).to.equal(first);
    expect(await txns.commit('t1')).to.equal(false);
  });

  it('refuses at prepare a wrong old value, a locked ref and a missing object, holding nothing', async () => {
    let err = await txns.prepare('t1', repo, [{ ref: 'refs/heads/main', old: second, new: first }]).catch((e: Error) => e);
    expect(String(err)).to.match(/update-ref/);
    expect(await txns.commit('t1')).to.equal(false);

    await txns.prepare('t2', repo, [{ ref: 'refs/heads/main', old: first, new: second }]);
    err = await txns.prepare('t3', repo, [{ ref: 'refs/heads/main', old: first, new: second }]).catch((e: Error) => e);
    expect(String(err)).to.match(/main\.lock/);
    await txns.abort('t2');

    err = await txns.prepare('t4', repo, [{ ref: 'refs/heads/main', old: first, new: 'f'.repeat(40) }]).catch((e: Error) => e);
    expect(String(err)).to.match(/update-ref/);
    expect(await main()).to.equal(first);
  });

  it('reuses a session for the next transaction of the same repo, but not once the directory was replaced', async () => {
    await txns.prepare('t1', repo, [{ ref: 'refs/heads/main', old: first, new: second }]);
    await txns.commit('t1');
    const sessions = (): number[] => gitSessions(root);
    expect(sessions()).to.have.length(1);
    await txns.prepare('t2', repo, [{ ref: 'refs/heads/main', old: second, new: first }]);
    await txns.commit('t2');
    expect(sessions()).to.have.length(1);
    expect(await main()).to.equal(first);

    // Deleted and created again at the same path: the old session's directory is gone.
    await fs.rename(repo, path.join(root, 'trash.git'));
    await makeRepo();
    await txns.prepare('t3', repo, [{ ref: 'refs/heads/main', old: first, new: second }]);
    await txns.commit('t3');
    expect(await main()).to.equal(second);
    expect((await readRefValues(path.join(root, 'trash.git'), ['refs/heads/main']))['refs/heads/main']).to.not.equal(second);
  });

  it("finds the coordinator's pushed objects in receive-pack's quarantine, and does not keep that session for another push", async () => {
    // A quarantine as receive-pack makes one: an object directory of its own, the repo's as alternate.
    const quarantine = path.join(repo, 'objects', 'incoming-test');
    await fs.mkdir(quarantine, { recursive: true });
    const inQuarantine = { GIT_OBJECT_DIRECTORY: quarantine, GIT_ALTERNATE_OBJECT_DIRECTORIES: path.join(repo, 'objects') };
    const tree = git(repo, 'mktree');
    const third = execFileSync('git', ['commit-tree', tree, '-p', first, '-m', 'third'], { cwd: repo, encoding: 'utf8', env: { ...process.env, ...inQuarantine, GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@a', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@a' } }).trim();
    const update = [{ ref: 'refs/heads/main', old: first, new: third }];

    const err = await txns.prepare('t0', repo, update).catch((e: Error) => e);
    expect(String(err), 'without the quarantine git does not find the object').to.match(/update-ref/);
    await txns.prepare('t1', repo, update, { quarantine });
    expect(existsSync(lock('refs/heads/main'))).to.equal(true);
    // receive-pack moves the objects into the repo before it asks for the refs.
    for (const dir of await fs.readdir(quarantine)) {
      await fs.mkdir(path.join(repo, 'objects', dir), { recursive: true });
      for (const file of await fs.readdir(path.join(quarantine, dir))) await fs.rename(path.join(quarantine, dir, file), path.join(repo, 'objects', dir, file));
    }
    await fs.rm(quarantine, { recursive: true });
    expect(await txns.commit('t1')).to.equal(true);
    expect(await main()).to.equal(third);
    expect(git(repo, 'cat-file', '-t', 'refs/heads/main')).to.equal('commit');
    await waitFor(() => gitSessions(root).length === 0);
  });

  it("drops the coordinator's prepared transaction when told its objects may not be in place, and applies the push afresh", async () => {
    const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined } as unknown as Logger;
    const replica = new GitReplica({ repoPath: () => repo } as unknown as RepoStore, quiet);
    try {
      // A new commit left in a quarantine that receive-pack never moved in (it died first).
      const quarantine = path.join(repo, 'objects', 'incoming-lost');
      await fs.mkdir(quarantine, { recursive: true });
      const tree = git(repo, 'mktree');
      const lost = execFileSync('git', ['commit-tree', tree, '-p', first, '-m', 'lost'], { cwd: repo, encoding: 'utf8', env: { ...process.env, GIT_OBJECT_DIRECTORY: quarantine, GIT_ALTERNATE_OBJECT_DIRECTORIES: path.join(repo, 'objects'), GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@a', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@a' } }).trim();
      await replica.stagePush('t1', 'o/r', [{ ref: 'refs/heads/main', old: first, new: lost }], { own: true, quarantine });
      expect(existsSync(lock('refs/heads/main'))).to.equal(true);
      await fs.rm(quarantine, { recursive: true });
      const err = await replica.applyPush('t1', 'o/r', [{ ref: 'refs/heads/main', old: first, new: lost }], undefined, false).catch((e: Error) => e);
      expect(String(err), 'git refuses a ref to a missing object').to.match(/update-ref/);
      expect(existsSync(lock('refs/heads/main'))).to.equal(false);
      expect(await main()).to.equal(first);

      // Objects that did reach the repo: the fresh apply moves the ref.
      await replica.stagePush('t2', 'o/r', [{ ref: 'refs/heads/main', old: first, new: second }], { own: true, quarantine: '' });
      await replica.applyPush('t2', 'o/r', [{ ref: 'refs/heads/main', old: first, new: second }], undefined, false);
      expect(await main()).to.equal(second);
    } finally {
      replica.close();
    }
  });

  describe('a transaction of many refs', () => {
    const many = (count: number, prefix: string): { ref: string; old: string; new: string }[] =>
      Array.from({ length: count }, (_, i) => ({ ref: `refs/heads/${prefix}-${i}`, old: ZERO_OID, new: second }));

    it('has its lock files, holding their new values, made durable by one file-system sync before prepare returns, by a git that does not fsync them', async () => {
      const updates = many(BULK_REF_UPDATES, 'bulk');
      const synced: { repoPath: string; locks: string[]; fsync: (string | undefined)[] }[] = [];
      txns.close();
      txns = new RefTransactions({
        maxSpares: 4,
        idleMs: 60_000,
        syncLocks: async (repoPath) => {
          synced.push({ repoPath, locks: updates.map((u) => readFileSync(lock(u.ref), 'utf8').trim()), fsync: gitSessions(root).map(fsyncSetting) });
        },
      });
      await txns.prepare('t1', repo, updates);
      expect(synced).to.have.length(1);
      expect(synced[0]!.repoPath).to.equal(repo);
      expect(synced[0]!.locks).to.deep.equal(updates.map(() => second));
      expect(synced[0]!.fsync).to.deep.equal([GIT_FSYNC_WITHOUT_REFS]);
      expect(await txns.commit('t1')).to.equal(true);
      expect(Object.values(await readRefValues(repo, updates.map((u) => u.ref)))).to.deep.equal(updates.map(() => second));

      // One ref fewer: git's own fsync of each lock, no file-system sync, in a session started with the node's settings.
      await txns.prepare('t2', repo, many(BULK_REF_UPDATES - 1, 'few'));
      expect(synced).to.have.length(1);
      await waitFor(() => gitSessions(root).length === 1); // the bulk session, ended, exits
      expect(gitSessions(root).map(fsyncSetting)).to.deep.equal([undefined]);
      expect(await txns.commit('t2')).to.equal(true);
    });

    it('keeps git\'s fsync of each lock, and syncs nothing, once told to (where `sync -f` does not work)', async () => {
      let syncs = 0;
      txns.close();
      txns = new RefTransactions({ maxSpares: 4, idleMs: 60_000, syncLocks: async () => void (syncs += 1) });
      txns.keepGitFsyncs();
      const updates = many(BULK_REF_UPDATES, 'bulk');
      await txns.prepare('t1', repo, updates);
      expect(syncs).to.equal(0);
      expect(gitSessions(root).map(fsyncSetting)).to.deep.equal([undefined]);
      expect(await txns.commit('t1')).to.equal(true);
      expect(Object.values(await readRefValues(repo, updates.map((u) => u.ref)))).to.deep.equal(updates.map(() => second));
    });

    it('fails its prepare, holding nothing, when the sync fails', async () => {
      txns.close();
      txns = new RefTransactions({ maxSpares: 4, idleMs: 60_000, syncLocks: async () => Promise.reject(new Error('EIO from the disk')) });
      const updates = many(BULK_REF_UPDATES, 'bulk');
      const err = await txns.prepare('t1', repo, updates).catch((e: Error) => e);
      expect(String(err)).to.match(/EIO from the disk/);
      expect(await txns.commit('t1')).to.equal(false);
      await waitFor(() => updates.every((u) => !existsSync(lock(u.ref))));
      expect(Object.keys(await readRefValues(repo, updates.map((u) => u.ref)))).to.deep.equal([]);
    });

    it('syncs the real file system, and says so when it cannot', async () => {
      await syncFileSystem(repo, 10_000, systemClock);
      const err = await syncFileSystem(path.join(root, 'no-such-dir'), 10_000, systemClock).catch((e: Error) => e);
      expect(String(err)).to.match(/sync -f failed/);
    });
  });
});

/** The core.fsync a process was started with through GIT_CONFIG_* (the last one wins), if any. */
function fsyncSetting(pid: number): string | undefined {
  const env = Object.fromEntries(
    readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .filter((kv) => kv.includes('='))
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
  let value: string | undefined;
  for (let i = 0; i < Number(env.GIT_CONFIG_COUNT ?? 0); i++) if (env[`GIT_CONFIG_KEY_${i}`] === 'core.fsync') value = env[`GIT_CONFIG_VALUE_${i}`];
  return value;
}

/** UpdateRefSession gits working in `root`. */
function gitSessions(root: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const command = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ').trim();
      if (UPDATE_REF_SESSION_COMMAND.test(command) && readlinkSync(`/proc/${entry}/cwd`).startsWith(root)) out.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
