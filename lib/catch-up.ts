import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { LOST_FOUND_PREFIX, applyRefEdits, readHead, readRefs, setHead } from './git-refs.js';
import { runGit } from './git.js';
import { addGitConfig } from './hooks.js';
import type { Logger } from './logger.js';
import { SECRET_HEADER, type PeerClient, type RepoStateAnswer } from './peer-client.js';
import type { RepoStore } from './repo-store.js';
import { compareVersions, type NodeId, type RepoVersion } from './txn-core.js';
import type { TxnDriver } from './txn-driver.js';

// Repairs a replica that missed committed pushes (it was down, partitioned, or failed to apply):
// fetch from the peer at the newest version, make our refs exactly its refs, and only then take its
// generation. Nothing is destroyed: if a ref we drop or move held commits that no ref keeps any more,
// its old value is kept under refs/lost+found/ (hidden from clients) and reported in the log.

export const DIRECT_HEADER = 'x-quorum-direct';

export interface CatchUpOptions {
  driver: TxnDriver;
  store: RepoStore;
  client: PeerClient;
  logger: Logger;
  peers: readonly NodeId[];
  secret: string;
  timeoutMs: number;
  /** Wall clock for stamps and failure times; Date.now unless a spec injects one. */
  now?: () => number;
  /**
   * Called after a copy was decided on and before the repo's lock is taken: the window in which a
   * push may commit. A seam for specs; nothing in the node sets it.
   */
  beforeCopy?: (repoId: string, mode: 'catch-up' | 'repair') => void | Promise<void>;
}

export class CatchUp {
  private readonly options: CatchUpOptions;
  private readonly running = new Map<string, Promise<boolean>>();

  constructor(options: CatchUpOptions) {
    this.options = options;
  }

  /** Catches one repo up; concurrent requests for the same repo share one run. Resolves true if it moved. */
  request(repoId: string): Promise<boolean> {
    let run = this.running.get(repoId);
    if (!run) {
      run = this.run(repoId)
        .catch((err) => {
          this.options.logger.warn('catch-up failed', { repo_id: repoId, err: (err as Error).message });
          return false;
        })
        .finally(() => this.running.delete(repoId));
      this.running.set(repoId, run);
    }
    return run;
  }

  private async run(repoId: string): Promise<boolean> {
    const { driver, client, peers } = this.options;
    const mine = driver.participant.repo(repoId);
    if (mine?.state !== 'live') return false;
    const states = await Promise.all(peers.map((p) => client.repoState(p, repoId, {}).then((s) => ({ peer: p, s }), () => undefined)));
    let best: { peer: NodeId; s: RepoStateAnswer } | undefined;
    for (const answer of states) {
      if (!answer || !answer.s.live || answer.s.epoch !== mine.epoch) continue;
      if (compareVersions(answer.s, mine) <= 0) continue;
      if (!best || answer.s.generation > best.s.generation) best = answer;
    }
    if (!best) return false;
    const snapshot = await client.repoState(best.peer, repoId, { refs: true });
    if (!snapshot.refs || snapshot.epoch !== mine.epoch || snapshot.generation <= mine.generation) return false;
    return this.copyFrom(repoId, best.peer, snapshot, 'catch-up');
  }

  /**
   * Spokes-style check of a few repos: our refs digest against the peers' at the same version. A
   * replica whose digest is in the minority has diverged; it repairs itself from the majority (its
   * own refs kept under refs/lost+found/). A tie is only reported: no side can be proven right.
   */
  async verify(repoIds: readonly string[]): Promise<void> {
    const { driver, client, peers, logger } = this.options;
    for (const repoId of repoIds) {
      const mine = driver.participant.repo(repoId);
      if (mine?.state !== 'live' || driver.participant.lockedBy(repoId) !== undefined) continue;
      const own = await repoDigest(driver, this.options.store, repoId);
      const answers = await Promise.all(peers.map((p) => client.repoState(p, repoId, { digest: true }).then((s) => ({ peer: p, s }), () => undefined)));
      const groups = new Map<string, NodeId[]>([[own.digest, ['self']]]);
      for (const a of answers) {
        if (!a?.s.live || a.s.digest === undefined || compareVersions(a.s, own.version) !== 0) continue;
        groups.set(a.s.digest, [...(groups.get(a.s.digest) ?? []), a.peer]);
      }
      if (groups.size === 1) continue;
      const sizes = Object.fromEntries([...groups].map(([d, nodes]) => [d.slice(0, 12), nodes]));
      const [bestDigest, bestNodes] = [...groups].sort((a, b) => b[1].length - a[1].length)[0]!;
      const ownCount = groups.get(own.digest)!.length;
      logger.error('replicas diverged at the same version', { repo_id: repoId, generation: own.version.generation, digests: sizes });
      if (bestDigest === own.digest || bestNodes.length === ownCount) continue;
      const source = bestNodes[0]!;
      const snapshot = await client.repoState(source, repoId, { refs: true });
      if (!snapshot.refs || compareVersions(snapshot, own.version) !== 0) continue;
      await this.copyFrom(repoId, source, snapshot, 'repair');
    }
  }

  /**
   * Makes our refs exactly the source's snapshot. For a catch-up we then take its version; for a
   * repair the version is already equal.
   */
  private async copyFrom(repoId: string, source: NodeId, snapshot: RepoStateAnswer, mode: 'catch-up' | 'repair'): Promise<boolean> {
    const { driver } = this.options;
    const refs = snapshot.refs ?? {};
    let moved = false;
    await this.options.beforeCopy?.(repoId, mode);
    await driver.withRepo(repoId, async () => {
      const mine = driver.participant.repo(repoId);
      if (driver.participant.lockedBy(repoId) !== undefined || mine?.state !== 'live' || mine.epoch !== snapshot.epoch) return;
      const repoPath = this.options.store.repoPath(repoId);
      const before = await readRefs(repoPath);
      await this.fetch(repoPath, `${source}/${repoId}.git`);
      const fetched = await readRefs(repoPath);
      // The source moved on while we fetched: try again on the next round rather than claim a version.
      if (Object.entries(refs).some(([ref, oid]) => fetched[ref] !== oid)) return;
      const dropped = Object.keys(fetched).filter((ref) => refs[ref] === undefined);
      const replaced = Object.entries(before).filter(([ref, oid]) => refs[ref] !== oid);
      const edits: string[] = [];
      if (replaced.length > 0 && (mode === 'repair' || (await this.wouldLose(repoPath, replaced.map(([, oid]) => oid))))) {
        const stamp = `${mine.epoch}.${mine.generation}-${Date.now()}`;
        for (const [ref, oid] of replaced) edits.push(`create ${LOST_FOUND_PREFIX}${stamp}/${ref.replace(/^refs\//, '')} ${oid}`);
        this.options.logger.warn(`${mode} kept refs only this replica had`, { repo_id: repoId, refs: replaced.map(([r]) => r), under: `${LOST_FOUND_PREFIX}${stamp}/` });
      }
      for (const ref of dropped) edits.push(`delete ${ref} ${fetched[ref]}`);
      if (edits.length > 0) await applyRefEdits(repoPath, edits);
      if (snapshot.head) await setHead(repoPath, snapshot.head);
      const after = await readRefs(repoPath);
      const same = Object.keys(after).length === Object.keys(refs).length && Object.entries(refs).every(([r, o]) => after[r] === o);
      if (!same) return;
      moved = mode === 'repair' ? true : await driver.caughtUp(repoId, { epoch: snapshot.epoch, generation: snapshot.generation });
      if (moved) this.options.logger.info(mode === 'repair' ? 'repaired' : 'caught up', { repo_id: repoId, from: source, generation: snapshot.generation });
    });
    return moved;
  }

  private async fetch(repoPath: string, url: string): Promise<void> {
    const env = { ...process.env, GIT_TERMINAL_PROMPT: '0' };
    addGitConfig(env, [
      ['http.extraHeader', `${SECRET_HEADER}: ${this.options.secret}`],
      ['http.extraHeader', `${DIRECT_HEADER}: 1`],
    ]);
    await runGit(['fetch', '--quiet', '--no-tags', '--no-write-fetch-head', '--no-auto-gc', url, '+refs/*:refs/*'], {
      cwd: repoPath,
      env,
      timeoutMs: this.options.timeoutMs,
    });
  }

  /** True when some of these commits are reachable from no ref any more. */
  private wouldLose(repoPath: string, oids: string[]): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const child = spawn('git', ['rev-list', '--max-count=1', '--stdin', '--not', '--all'], { cwd: repoPath, stdio: ['pipe', 'pipe', 'ignore'] });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.on('error', reject);
      child.on('close', () => resolve(out.trim() !== ''));
      child.stdin.on('error', () => undefined);
      child.stdin.end(oids.join('\n') + '\n');
    });
  }
}

/** A replica's refs and HEAD, read together with its version, and their digest. */
export async function repoDigest(
  driver: TxnDriver,
  store: RepoStore,
  repoId: string,
): Promise<{ version: RepoVersion; refs: Record<string, string>; head: string; digest: string }> {
  const repoPath = store.repoPath(repoId);
  return driver.withRepoResult(repoId, async () => {
    const version = driver.participant.versionOf(repoId);
    const [refs, head] = await Promise.all([readRefs(repoPath), readHead(repoPath)]);
    return { version, refs, head, digest: refsDigest(refs, head) };
  });
}

/** sha256 over HEAD and every ref, in name order: equal digests mean identical refs. */
export function refsDigest(refs: Readonly<Record<string, string>>, head: string): string {
  const hash = createHash('sha256').update(`HEAD ${head}\n`);
  for (const ref of Object.keys(refs).sort()) hash.update(`${refs[ref]} ${ref}\n`);
  return hash.digest('hex');
}
