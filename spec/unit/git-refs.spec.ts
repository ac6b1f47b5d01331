import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readHead, readRefValues, readRefs } from '../../lib/git/git-refs.js';

// readRefValues reads git's files backend without git; it must agree with git for loose refs, packed
// refs, loose-over-packed, and refs that do not exist.

describe('git refs read from files', () => {
  let repo: string;
  const git = (...args: string[]): string =>
    execFileSync('git', args, { cwd: repo, encoding: 'utf8', env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@a', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@a' } }).trim();

  before(async () => {
    repo = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-refs-'));
    git('init', '-q', '--bare', '--initial-branch=main', '.');
    const tree = git('mktree');
    const first = git('commit-tree', tree, '-m', 'first');
    const second = git('commit-tree', tree, '-p', first, '-m', 'second');
    git('update-ref', 'refs/heads/a', first);
    git('update-ref', 'refs/tags/t', first);
    git('pack-refs', '--all');
    git('update-ref', 'refs/heads/a', second);
    git('update-ref', 'refs/heads/b', first);
  });
  after(async () => {
    await fs.rm(repo, { recursive: true, force: true });
  });

  it('agrees with git for loose, packed and overridden refs, and omits missing ones', async () => {
    const wanted = ['refs/heads/a', 'refs/heads/b', 'refs/tags/t', 'refs/heads/missing', 'refs/heads/a/below'];
    const all = await readRefs(repo);
    expect(Object.keys(all).sort()).to.deep.equal(['refs/heads/a', 'refs/heads/b', 'refs/tags/t']);
    expect(await readRefValues(repo, wanted)).to.deep.equal(all);
  });

  it('leaves odd names to git rather than reading outside refs/', async () => {
    // A file outside refs/ that holds an object id, as a ref file would: only the `..` guard keeps it
    // from being read as the value of `refs/heads/../../outside`.
    await fs.writeFile(path.join(repo, 'outside'), `${'a'.repeat(40)}\n`);
    expect(await readRefValues(repo, ['refs/heads/../../outside'])).to.deep.equal({});
    expect(await readRefValues(repo, ['refs/heads/../../HEAD'])).to.deep.equal({});
  });

  it('reads the branch HEAD names', async () => {
    expect(await readHead(repo)).to.equal('refs/heads/main');
  });
});
