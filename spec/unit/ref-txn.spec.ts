import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync, promises as fs, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UPDATE_REF_SESSION_COMMAND, readRefValues } from '../../lib/git/git-refs.js';
import { RefTransactions } from '../../lib/git/ref-txn.js';
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
});

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
