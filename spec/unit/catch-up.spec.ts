import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CatchUp, readRetryDelayMs, refsDigest, type CatchUpOptions } from '../../lib/cluster/catch-up.js';
import { readHead, readRefs } from '../../lib/git/git-refs.js';
import type { Logger } from '../../lib/base/logger.js';
import type { PeerClient, RepoStateAnswer } from '../../lib/cluster/peer-client.js';
import type { RepoStore } from '../../lib/storage/repo-store.js';
import type { RepoVersion } from '../../lib/core/txn-core.js';
import type { TxnDriver } from '../../lib/cluster/txn-driver.js';
import { ManualClock } from '../support/manual-clock.js';

// CatchUp against real bare repos on disk, with the driver, the peer client and the log faked: a
// "peer" is a directory, and git fetches from `<peer>/<owner>/<name>.git` as from any URL. The
// specs check what the replica's refs are afterwards, never how long anything took.

const REPO = 'own/repo';
const GIT_ENV = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@a', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@a', GIT_AUTHOR_DATE: '2024-01-01T00:00:00Z', GIT_COMMITTER_DATE: '2024-01-01T00:00:00Z' };

function git(dir: string, ...args: string[]): string {
  return execFileSync('git', args, { cwd: dir, encoding: 'utf8', env: GIT_ENV }).trim();
}

interface Entry extends RepoVersion {
  state: 'live';
}

/** One bare repo per node under `root`, a fake driver for "self" and fake peers answering repo-state. */
class World {
  readonly root: string;
  readonly self: Entry = { state: 'live', epoch: 1, generation: 5 };
  readonly peerVersions = new Map<string, RepoVersion>();
  readonly logs: { level: string; message: string; meta: Record<string, unknown> }[] = [];
  caughtUpTo: RepoVersion | undefined;
  readonly clock = new ManualClock(1_700_000_000_000);

  constructor(root: string) {
    this.root = root;
  }

  dir(node: string): string {
    return path.join(this.root, node, 'own', 'repo.git');
  }

  get peers(): string[] {
    return [...this.peerVersions.keys()].map((p) => path.join(this.root, p));
  }

  async init(node: string): Promise<void> {
    await fs.mkdir(this.dir(node), { recursive: true });
    git(this.dir(node), 'init', '-q', '--bare', '--initial-branch=main', '.');
  }

  /** A commit made in `node`'s repo; `parents` must exist there. */
  commit(node: string, message: string, ...parents: string[]): string {
    const tree = git(this.dir(node), 'mktree');
    return git(this.dir(node), 'commit-tree', tree, ...parents.flatMap((p) => ['-p', p]), '-m', message);
  }

  setRef(node: string, ref: string, oid: string): void {
    git(this.dir(node), 'update-ref', ref, oid);
  }

  /** Copies every object of `from` into `to` (so both can name the same commits). */
  share(from: string, to: string): void {
    git(this.dir(to), 'fetch', '-q', this.dir(from), '+refs/*:refs/shared-tmp/*');
    for (const ref of git(this.dir(to), 'for-each-ref', '--format=%(refname)', 'refs/shared-tmp/').split('\n').filter(Boolean)) {
      git(this.dir(to), 'update-ref', '-d', ref);
    }
  }

  allRefs(node: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const line of git(this.dir(node), 'for-each-ref', '--format=%(objectname) %(refname)').split('\n').filter(Boolean)) {
      const [oid, ref] = line.split(' ') as [string, string];
      out[ref] = oid;
    }
    return out;
  }

  catchUp(extra: Partial<CatchUpOptions> = {}): CatchUp {
    const world = this;
    let chain: Promise<unknown> = Promise.resolve();
    const withRepo = (_id: string, fn: () => Promise<void>): Promise<void> => {
      const next = chain.then(fn, fn);
      chain = next.catch(() => undefined);
      return next;
    };
    const driver = {
      participant: {
        repo: () => world.self,
        lockedBy: () => undefined,
        versionOf: () => ({ epoch: world.self.epoch, generation: world.self.generation }),
      },
      withRepo,
      async withRepoResult<T>(id: string, fn: () => Promise<T>): Promise<T> {
        let result!: T;
        await withRepo(id, async () => {
          result = await fn();
        });
        return result;
      },
      async caughtUp(_id: string, version: RepoVersion): Promise<boolean> {
        world.caughtUpTo = version;
        world.self.epoch = version.epoch;
        world.self.generation = version.generation;
        return true;
      },
    } as unknown as TxnDriver;
    const client = {
      async repoState(peer: string, repoId: string, want: { refs?: boolean; digest?: boolean }): Promise<RepoStateAnswer> {
        const name = path.basename(peer);
        const version = world.peerVersions.get(name);
        if (!version) throw new Error(`no peer ${name}`);
        const answer: RepoStateAnswer = { repo_id: repoId, live: true, ...version };
        if (!want.refs && !want.digest) return answer;
        const dir = world.dir(name);
        const [refs, head] = await Promise.all([readRefs(dir), readHead(dir)]);
        return { ...answer, digest: refsDigest(refs, head), ...(want.refs ? { refs, head } : {}) };
      },
    } as unknown as PeerClient;
    const logger = {
      info: (message: string, meta: Record<string, unknown> = {}) => world.logs.push({ level: 'info', message, meta }),
      warn: (message: string, meta: Record<string, unknown> = {}) => world.logs.push({ level: 'warn', message, meta }),
      error: (message: string, meta: Record<string, unknown> = {}) => world.logs.push({ level: 'error', message, meta }),
      debug: () => undefined,
    } as unknown as Logger;
    const store = { repoPath: () => world.dir('self') } as unknown as RepoStore;
    return new CatchUp({ driver, store, client, logger, peers: this.peers, secret: 's', timeoutMs: 30_000, clock: world.clock, ...extra });
  }
}

describe('CatchUp', () => {
  let root: string;
  let w: World;

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-catch-up-'));
    w = new World(root);
    for (const node of ['self', 'p1', 'p2']) await w.init(node);
  });
  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  /** p1 and p2 hold `base` then `newer` on main at generation 7; self is at 5 with main at `base`. */
  function laggingSelf(): { base: string; newer: string } {
    const base = w.commit('p1', 'base');
    const newer = w.commit('p1', 'newer', base);
    w.setRef('p1', 'refs/heads/main', newer);
    w.share('p1', 'p2');
    w.setRef('p2', 'refs/heads/main', newer);
    w.share('p1', 'self');
    w.setRef('self', 'refs/heads/main', base);
    w.peerVersions.set('p1', { epoch: 1, generation: 7 });
    w.peerVersions.set('p2', { epoch: 1, generation: 7 });
    return { base, newer };
  }

  describe('catch-up keeps what only this replica had', () => {
    it('keeps a moved ref and a ref only it had under refs/lost+found/ and makes every other ref the source\'s', async () => {
      const { base, newer } = laggingSelf();
      const rogue = w.commit('self', 'rogue', base);
      const rogueChild = w.commit('self', 'rogue child', rogue);
      w.setRef('self', 'refs/heads/main', rogue);
      w.setRef('self', 'refs/heads/only-here', rogueChild);

      expect(await w.catchUp().request(REPO)).to.equal(true);

      const refs = w.allRefs('self');
      const lost = Object.entries(refs).filter(([r]) => r.startsWith('refs/lost+found/'));
      expect(lost.map(([r, o]) => [r.replace(/^refs\/lost\+found\/[^/]+\//, ''), o]).sort()).to.deep.equal([
        ['heads/main', rogue],
        ['heads/only-here', rogueChild],
      ]);
      expect(await readRefs(w.dir('self'))).to.deep.equal({ 'refs/heads/main': newer });
      expect(Object.keys(refs).filter((r) => r.startsWith('refs/quorum-fetch/'))).to.deep.equal([]);
      expect(w.caughtUpTo).to.deep.equal({ epoch: 1, generation: 7 });
      expect(w.logs.some((l) => l.level === 'warn' && /kept refs only this replica had/.test(l.message))).to.equal(true);
    });

    it('keeps nothing for a ref that was only fast-forwarded, nor for a dropped ref whose commits the source still has', async () => {
      const { base, newer } = laggingSelf();
      w.setRef('self', 'refs/heads/gone', base);

      expect(await w.catchUp().request(REPO)).to.equal(true);

      expect(w.allRefs('self')).to.deep.equal({ 'refs/heads/main': newer });
    });

    it('turns a branch into a directory of branches (delete a, create a/b) without failing', async () => {
      const { base, newer } = laggingSelf();
      w.setRef('p1', 'refs/heads/topic/one', base);
      w.setRef('p2', 'refs/heads/topic/one', base);
      const rogue = w.commit('self', 'rogue', base);
      w.setRef('self', 'refs/heads/topic', rogue);

      expect(await w.catchUp().request(REPO)).to.equal(true);

      expect(await readRefs(w.dir('self'))).to.deep.equal({ 'refs/heads/main': newer, 'refs/heads/topic/one': base });
      expect(Object.values(w.allRefs('self'))).to.include(rogue);
    });

    it('leaves earlier lost+found refs alone and removes a fetch namespace a crash left behind', async () => {
      const { base, newer } = laggingSelf();
      w.setRef('self', 'refs/lost+found/earlier/heads/x', base);
      w.setRef('self', 'refs/quorum-fetch/crashed/heads/main', base);

      expect(await w.catchUp().request(REPO)).to.equal(true);

      expect(w.allRefs('self')).to.deep.equal({ 'refs/heads/main': newer, 'refs/lost+found/earlier/heads/x': base });
    });
  });

  describe('a copy whose premise went stale does nothing', () => {
    it('repair: a push committed between the digest comparison and the lock is not rolled back', async () => {
      const base = w.commit('p1', 'base');
      const majority = w.commit('p1', 'majority', base);
      w.setRef('p1', 'refs/heads/main', majority);
      w.share('p1', 'p2');
      w.setRef('p2', 'refs/heads/main', majority);
      w.share('p1', 'self');
      w.setRef('self', 'refs/heads/main', base);
      w.peerVersions.set('p1', { epoch: 1, generation: 5 });
      w.peerVersions.set('p2', { epoch: 1, generation: 5 });
      const pushed = w.commit('self', 'pushed', base);
      const catchUp = w.catchUp({
        beforeCopy: () => {
          // A push commits here: the replica applies it and takes generation 6.
          w.setRef('self', 'refs/heads/main', pushed);
          w.self.generation = 6;
        },
      });

      await catchUp.verify([REPO]);

      expect(w.allRefs('self')).to.deep.equal({ 'refs/heads/main': pushed });
      expect(w.logs.filter((l) => l.message === 'repaired')).to.deep.equal([]);
    });

    it('catch-up: a replica that is no longer behind the snapshot is left as it is', async () => {
      const { base } = laggingSelf();
      const pushed = w.commit('self', 'pushed', base);
      const catchUp = w.catchUp({
        beforeCopy: () => {
          w.setRef('self', 'refs/heads/main', pushed);
          w.self.generation = 8;
        },
      });

      expect(await catchUp.request(REPO)).to.equal(false);

      expect(w.allRefs('self')).to.deep.equal({ 'refs/heads/main': pushed });
      expect(w.caughtUpTo).to.equal(undefined);
    });
  });

  describe('a replica that cannot converge', () => {
    /**
     * The peers hold refs/heads/topic at `oid`; here a file no git wrote sits where it must go, so
     * every copy fails until the directory returned is removed.
     */
    async function blockTopic(oid: string): Promise<string> {
      w.setRef('p1', 'refs/heads/topic', oid);
      w.setRef('p2', 'refs/heads/topic', oid);
      const dir = path.join(w.dir('self'), 'refs', 'heads', 'topic');
      await fs.mkdir(dir, { recursive: true });
      await fs.writeFile(path.join(dir, 'junk'), 'not a ref\n');
      return dir;
    }

    it('a tie at one version repairs nothing and is reported once it lasts 3 rounds', async () => {
      const base = w.commit('p1', 'base');
      w.setRef('p1', 'refs/heads/main', base);
      w.share('p1', 'self');
      const mineOnly = w.commit('self', 'mine only', base);
      w.setRef('self', 'refs/heads/main', mineOnly);
      w.peerVersions.set('p1', { epoch: 1, generation: 5 });
      w.peerVersions.set('p2', { epoch: 1, generation: 4 });
      const catchUp = w.catchUp();
      for (let round = 1; round <= 3; round += 1) await catchUp.verify([REPO]);
      expect(catchUp.notConverging().map((r) => [r.repo_id, r.failures])).to.deep.equal([[REPO, 3]]);
      expect(catchUp.notConverging()[0]!.last_error).to.match(/no majority/);
      expect(w.allRefs('self')).to.deep.equal({ 'refs/heads/main': mineOnly });
    });

    it('is reported after 3 failures in a row (logged once), and no longer once a catch-up succeeds', async () => {
      const { base } = laggingSelf();
      const blocked = await blockTopic(base);
      const catchUp = w.catchUp();
      const since = w.clock.now();
      for (let round = 1; round <= 4; round += 1) {
        expect(await catchUp.request(REPO)).to.equal(false);
        if (round === 2) expect(catchUp.notConverging()).to.deep.equal([]);
        w.clock.advance(1000);
      }
      const report = catchUp.notConverging();
      expect(report).to.have.length(1);
      expect(report[0]).to.deep.include({ repo_id: REPO, failures: 4, since: new Date(since).toISOString() });
      expect(report[0]!.last_error).to.match(/refs\/heads\/topic/);
      expect(Object.keys(w.allRefs('self')).filter((r) => r.startsWith('refs/quorum-fetch/'))).to.deep.equal([]);
      expect(w.logs.filter((l) => l.level === 'error' && l.message === 'replica is not converging')).to.have.length(1);

      await fs.rm(blocked, { recursive: true });
      expect(await catchUp.request(REPO)).to.equal(true);
      expect(catchUp.notConverging()).to.deep.equal([]);
      expect(w.logs.filter((l) => l.level === 'info' && l.message === 'replica is converging again')).to.have.length(1);
    });

    it("a read's request after failures waits out a doubling backoff (1 s, 2 s, ... 30 s); the sync loop's does not", async () => {
      const { newer } = laggingSelf();
      const blocked = await blockTopic(newer);
      let runs = 0;
      const catchUp = w.catchUp({ beforeCopy: () => void (runs += 1) });
      expect(readRetryDelayMs(1)).to.equal(1000);
      expect([2, 3, 5, 6, 50].map(readRetryDelayMs)).to.deep.equal([2000, 4000, 16_000, 30_000, 30_000]);

      expect(await catchUp.nudge(REPO)).to.equal(false);
      expect(runs, 'the first read tries').to.equal(1);
      w.clock.advance(999);
      expect(await catchUp.nudge(REPO)).to.equal(false);
      expect(runs, 'within 1 s of the failure, a read does not try again').to.equal(1);
      w.clock.advance(1);
      await catchUp.nudge(REPO);
      expect(runs, 'after 1 s it does').to.equal(2);
      w.clock.advance(1999);
      await catchUp.nudge(REPO);
      expect(runs, 'after a second failure, 2 s').to.equal(2);
      // The sync loop (and a push that needs this replica current) asks with request(): no backoff.
      await catchUp.request(REPO);
      expect(runs).to.equal(3);
      expect(catchUp.notConverging().map((r) => r.failures)).to.deep.equal([3]);

      await fs.rm(blocked, { recursive: true });
      w.clock.advance(4000);
      expect(await catchUp.nudge(REPO)).to.equal(true);
      expect(w.allRefs('self')['refs/heads/main']).to.equal(newer);
    });
  });
});
