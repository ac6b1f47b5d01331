import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { eventually, http, pathExists, type Cluster, type TestNode } from './cluster.js';
import { SECRET_HEADER } from './push-helpers.js';

// Checks shared by the fault specs (failpoints, partitions): what a crash or a cut may leave behind
// once the cluster has settled, and whether every node agrees that a repo exists.

/** A node's repo-state answer, with the lock flags the node adds for `verify`. */
export interface RepoStateAnswer {
  live: boolean;
  epoch: number;
  generation: number;
  locked: boolean;
  in_doubt: boolean;
}

export async function repoStateOf(node: TestNode, repoId: string): Promise<RepoStateAnswer> {
  const res = await http(`${node.url}/internal/repo-state/${repoId}`, { headers: { [SECRET_HEADER]: node.env.CLUSTER_SECRET! }, timeoutMs: 5000 });
  if (res.status !== 200) throw new Error(`${node.serverId} repo-state answered ${res.status}: ${res.text}`);
  return res.body as RepoStateAnswer;
}

async function walk(dir: string, out: string[], depth = 0): Promise<void> {
  if (depth > 12) return;
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const p = path.join(dir, e.name);
    out.push(p);
    if (e.isDirectory()) await walk(p, out, depth + 1);
  }
}

/**
 * What a crash can leave on a node's disk that must not outlive the node's next settled state:
 * staged creates (DATA_DIR/staging), shipped packs (DATA_DIR/incoming, outgoing), git lock files
 * anywhere under the served repos, and push quarantines (objects/tmp_objdir-incoming-*, objects/incoming-*).
 * Returns the paths found, relative to DATA_DIR.
 */
export async function leftoversOf(node: TestNode): Promise<string[]> {
  const found: string[] = [];
  for (const dir of ['staging', 'incoming', 'outgoing']) {
    for (const e of await fs.readdir(path.join(node.dataDir, dir)).catch(() => [])) found.push(path.join(dir, e));
  }
  const all: string[] = [];
  await walk(node.reposDir, all);
  for (const p of all) {
    const base = path.basename(p);
    const parent = path.basename(path.dirname(p));
    if (base.endsWith('.lock') || (parent === 'objects' && /^(tmp_objdir-incoming-|incoming-)/.test(base))) found.push(path.relative(node.dataDir, p));
  }
  return found.sort();
}

/** Waits until none of `nodes` has leftovers on disk, nor a repo lock or in-doubt transaction for `repoId`. */
export async function expectNoLeftovers(nodes: TestNode[], repoId: string, timeoutMs = 20_000): Promise<void> {
  await eventually(async () => {
    for (const node of nodes) {
      expect(await leftoversOf(node), `${node.serverId} leftovers`).to.deep.equal([]);
      const state = await repoStateOf(node, repoId);
      expect({ locked: state.locked, in_doubt: state.in_doubt }, `${node.serverId} lock state of ${repoId}`).to.deep.equal({ locked: false, in_doubt: false });
    }
  }, timeoutMs, 200);
}

/**
 * Waits until every one of `nodes` agrees whether `repoId` exists (served: repo-state says live, and
 * the bare directory is on disk; or neither) and at which version; returns whether it exists.
 */
export async function expectRepoPresenceAgrees(nodes: TestNode[], repoId: string, timeoutMs = 20_000): Promise<boolean> {
  return eventually(async () => {
    const seen = await Promise.all(
      nodes.map(async (n) => {
        const state = await repoStateOf(n, repoId);
        return { node: n.serverId, live: state.live, onDisk: await pathExists(n.repoDir(repoId)), epoch: state.epoch };
      }),
    );
    for (const s of seen) expect(s.onDisk, `${s.node}: live ${s.live} but bare dir on disk ${s.onDisk}`).to.equal(s.live);
    const summary = seen.map((s) => `${s.node}:${s.live ? 'live' : 'absent'}@${s.epoch}`).join(' ');
    expect(new Set(seen.map((s) => s.live)).size, `nodes disagree whether ${repoId} exists: ${summary}`).to.equal(1);
    expect(new Set(seen.map((s) => s.epoch)).size, `nodes disagree on ${repoId}'s epoch: ${summary}`).to.equal(1);
    return seen[0]!.live;
  }, timeoutMs, 200);
}

/** The running nodes of a cluster. */
export function runningNodes(cluster: Cluster): TestNode[] {
  return cluster.nodes.filter((n) => n.running);
}
