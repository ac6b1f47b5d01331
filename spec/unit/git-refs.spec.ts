import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { deleteRefsUnder, installPackBuffers, installPackFiles, readHead, readRefFiles, readRefValues, readRefs, releasePackKeeps } from '../../lib/git/git-refs.js';

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

  it('lists every ref as git does, reading the files: loose, packed, loose over packed, nested, private ones left out', async () => {
    const first = git('rev-parse', 'refs/tags/t');
    git('tag', '-a', '-m', 'annotated', 'annotated', first);
    git('update-ref', 'refs/heads/deep/er/branch', first);
    git('update-ref', 'refs/lost+found/x', first);
    git('update-ref', 'refs/quorum-git/fetch/1.2-3/heads/a', first);
    git('pack-refs', '--all');
    git('update-ref', 'refs/heads/b', git('rev-parse', 'refs/heads/a'));
    git('update-ref', 'refs/heads/c', first);
    const byGit = await readRefs(repo);
    expect(byGit).to.include.keys('refs/heads/deep/er/branch', 'refs/tags/annotated', 'refs/heads/c');
    expect(await readRefFiles(repo)).to.deep.equal(byGit);
    git('update-ref', '-d', 'refs/heads/c');
    git('update-ref', '-d', 'refs/heads/deep/er/branch');
    expect(await readRefFiles(repo)).to.deep.equal(await readRefs(repo));
    // Many loose refs are listed by git instead: the same answer.
    execFileSync('git', ['update-ref', '--stdin'], { cwd: repo, input: Array.from({ length: 100 }, (_, i) => `create refs/heads/many/${i} ${first}\n`).join('') });
    expect(await readRefFiles(repo)).to.deep.equal(await readRefs(repo)).and.to.include.keys('refs/heads/many/99');
    execFileSync('git', ['update-ref', '--stdin'], { cwd: repo, input: Array.from({ length: 100 }, (_, i) => `delete refs/heads/many/${i}\n`).join('') });
  });

  it('leaves a symbolic ref, a lock file and an odd name to git', async () => {
    const a = git('rev-parse', 'refs/heads/a');
    git('symbolic-ref', 'refs/heads/sym', 'refs/heads/a');
    expect(await readRefFiles(repo)).to.deep.equal(await readRefs(repo)).and.to.include({ 'refs/heads/sym': a });
    git('update-ref', '-d', '--no-deref', 'refs/heads/sym');
    await fs.writeFile(path.join(repo, 'refs/heads/x.lock'), `${a}\n`);
    await fs.writeFile(path.join(repo, 'refs/heads/.hidden'), `${a}\n`);
    expect(await readRefFiles(repo)).to.deep.equal(await readRefs(repo)).and.not.to.have.keys('refs/heads/x.lock', 'refs/heads/.hidden');
    await fs.rm(path.join(repo, 'refs/heads/x.lock'));
    await fs.rm(path.join(repo, 'refs/heads/.hidden'));
  });

  it('deletes every ref below a prefix, loose or packed, and nothing beside it; a prefix with none is no error', async () => {
    const first = git('rev-parse', 'refs/tags/t');
    const before = await readRefs(repo);
    const names = ['refs/quorum-fetch/9.9-1/heads/packed', 'refs/quorum-fetch/9.9-1/heads/loose', 'refs/quorum-fetch/9.9-2/tags/x'];
    const listed = (): string[] => git('for-each-ref', '--format=%(refname)').split('\n').filter((r) => r.startsWith('refs/quorum-fetch'));
    git('update-ref', names[0]!, first);
    git('pack-refs', '--all');
    git('update-ref', names[1]!, first);
    git('update-ref', names[2]!, first);
    git('update-ref', 'refs/quorum-fetchless', first);
    await deleteRefsUnder(repo, 'refs/quorum-fetch/9.9-2/');
    expect(listed()).to.deep.equal([names[1], names[0], 'refs/quorum-fetchless']);
    // Only packed-refs holds one (no loose directory left for the prefix): found there.
    git('update-ref', '-d', names[1]!);
    git('pack-refs', '--all');
    await fs.rm(path.join(repo, 'refs/quorum-fetch'), { recursive: true, force: true });
    expect(listed()).to.deep.equal([names[0], 'refs/quorum-fetchless']);
    await deleteRefsUnder(repo, 'refs/quorum-fetch/');
    expect(listed()).to.deep.equal(['refs/quorum-fetchless']);
    await deleteRefsUnder(repo, 'refs/quorum-fetch/');
    await deleteRefsUnder(repo, 'refs/none-here/');
    git('update-ref', '-d', 'refs/quorum-fetchless');
    expect(await readRefs(repo)).to.deep.equal(before);
  });

  it('reads the branch HEAD names', async () => {
    expect(await readHead(repo)).to.equal('refs/heads/main');
  });
});

// Found by the suite under load (maintenance.spec, node-1's replica): a peer installs a push's pack
// at prepare and moves the refs at commit. A background `gc --auto` running in between listed the
// new .pack (repack lists *.pack files) before its .idx was there, so pack-objects never saw the
// pack and did not keep its objects (unreachable until the commit), and repack deleted it as
// redundant; the commit then moved main onto a commit whose objects were gone. git guards its own
// packs (receive-pack's, fetch's) with a .keep file from index-pack until the refs are moved; a
// peer's pack now gets one too, from before its .pack is written until its push is applied or dropped.
describe('a peer\'s installed pack against a concurrent repack', () => {
  let repo: string;
  let work: string;
  const env = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@a', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@a' };
  const git = (cwd: string, args: string[], input?: string): string => execFileSync('git', args, { cwd, encoding: 'utf8', env, ...(input === undefined ? {} : { input }) }).trim();

  /** A pack (as a peer receives it inline) holding one new commit on top of `parent`, and that commit. */
  async function packOf(parent: string, message: string): Promise<{ files: Record<string, Buffer>; commit: string }> {
    const tree = git(work, ['write-tree']);
    const commit = git(work, ['commit-tree', tree, '-p', parent, '-m', message]);
    const out = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-pack-'));
    const base = git(work, ['pack-objects', '--revs', path.join(out, 'pack')], `${commit}\n^${parent}\n`);
    const files: Record<string, Buffer> = {};
    for (const ext of ['pack', 'idx']) files[`pack-${base}.${ext}`] = await fs.readFile(path.join(out, `pack-${base}.${ext}`));
    await fs.rm(out, { recursive: true, force: true });
    return { files, commit };
  }

  beforeEach(async () => {
    repo = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-keep-'));
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-keep-work-'));
    git(repo, ['init', '-q', '--bare', '--initial-branch=main', '.']);
    git(work, ['init', '-q', '--initial-branch=main', '.']);
    await fs.writeFile(path.join(work, 'f'), 'one\n');
    git(work, ['add', 'f']);
    git(work, ['commit', '-q', '-m', 'one']);
    git(work, ['push', '-q', repo, 'main']);
  });
  afterEach(async () => {
    await fs.rm(repo, { recursive: true, force: true });
    await fs.rm(work, { recursive: true, force: true });
  });

  it('keeps a prepared push\'s objects through a repack that drops unreachable ones, and lets them go once the push is applied', async () => {
    const one = git(work, ['rev-parse', 'HEAD']);
    const { files, commit } = await packOf(one, 'two');
    installPackBuffers(repo, files, 'txn-1');
    // The refs do not name the new commit yet (its push is prepared, not committed): the harshest
    // repack there is, which drops every unreachable object, must leave it.
    git(repo, ['repack', '-a', '-d', '-q']);
    expect(git(repo, ['cat-file', '-t', commit])).to.equal('commit');
    git(repo, ['update-ref', 'refs/heads/main', commit, one]);
    await releasePackKeeps(repo, 'txn-1');
    const keeps = (await fs.readdir(path.join(repo, 'objects', 'pack'))).filter((f) => f.endsWith('.keep'));
    expect(keeps).to.deep.equal([]);
    git(repo, ['repack', '-a', '-d', '-q']);
    git(repo, ['fsck', '--strict']);
    expect(git(repo, ['rev-parse', 'main'])).to.equal(commit);
  });

  it('does the same for a pack streamed ahead of its prepare, and releases only its own transaction\'s keep', async () => {
    const one = git(work, ['rev-parse', 'HEAD']);
    const { files, commit } = await packOf(one, 'two');
    const incoming = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-incoming-'));
    for (const [name, content] of Object.entries(files)) await fs.writeFile(path.join(incoming, name), content);
    await installPackFiles(repo, incoming, 'txn-2');
    git(repo, ['repack', '-a', '-d', '-q']);
    expect(git(repo, ['cat-file', '-t', commit])).to.equal('commit');
    await releasePackKeeps(repo, 'txn-other');
    expect((await fs.readdir(path.join(repo, 'objects', 'pack'))).filter((f) => f.endsWith('.keep'))).to.have.length(1);
    await releasePackKeeps(repo, 'txn-2');
    expect((await fs.readdir(path.join(repo, 'objects', 'pack'))).filter((f) => f.endsWith('.keep'))).to.deep.equal([]);
  });
});
