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
    txns.abort('t1');
    await waitFor(() => !existsSync(lock('refs/heads/main')));
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
    txns.abort('t2');

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
