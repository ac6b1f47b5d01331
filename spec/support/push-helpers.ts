import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream, promises as fs, readFileSync } from 'node:fs';
import { once } from 'node:events';
import nodeHttp from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { expect } from 'chai';
import { pickCoordinator } from '../../lib/core/routing.js';
import { eventually, http, type Cluster, type GitClient, type GitResult, type TestNode } from './cluster.js';
import { parseForEachRef } from '../../lib/git/git-refs.js';

// Helpers for the replicated-push specs: what each node holds for a repo (read straight from its
// bare directory on disk, and its version from the internal API), checks that the replicas agree,
// routing-aware repo names, and the pieces of the large-pack spec (deterministic incompressible
// data, memory sampling of node processes).

export const SECRET_HEADER = 'x-quorum-secret';

/** What one replica holds: refs (every ref, refs/lost+found included) and where HEAD points. */
export interface ReplicaState {
  refs: Record<string, string>;
  head: string;
}

/** The refs of a node's copy of a repo, read with git from its bare directory (works on stopped nodes too). */
export async function diskRefs(git: GitClient, node: TestNode, repoId: string): Promise<Record<string, string>> {
  return parseForEachRef(await git.ok(['--git-dir', node.repoDir(repoId), 'for-each-ref', '--format=%(objectname) %(refname)']));
}

export async function diskState(git: GitClient, node: TestNode, repoId: string): Promise<ReplicaState> {
  const [refs, head] = await Promise.all([
    diskRefs(git, node, repoId),
    git.ok(['--git-dir', node.repoDir(repoId), 'symbolic-ref', 'HEAD']).then((s) => s.trim()),
  ]);
  return { refs, head };
}

/** `git fsck --no-dangling` on a node's copy: every object of every ref present and sound. */
export async function expectFsckClean(git: GitClient, node: TestNode, repoId: string): Promise<void> {
  const result = await git.run(['--git-dir', node.repoDir(repoId), 'fsck', '--no-dangling', '--no-progress'], { timeoutMs: 120_000 });
  expect(result.code, `git fsck on ${node.serverId}: ${result.stdout}${result.stderr}`).to.equal(0);
  // fsck exits 0 on some problems it only reports; anything but notices is a finding.
  const findings = `${result.stdout}${result.stderr}`.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('notice:'));
  expect(findings, `git fsck on ${node.serverId}`).to.deep.equal([]);
}

export interface RepoVersionAnswer {
  live: boolean;
  epoch: number;
  generation: number;
}

/** A node's version of a repo, from GET /internal/repo-state (the cluster secret authenticates). */
export async function repoVersion(node: TestNode, repoId: string): Promise<RepoVersionAnswer> {
  const res = await http(`${node.url}/internal/repo-state/${repoId}`, { headers: { [SECRET_HEADER]: node.env.CLUSTER_SECRET! } });
  if (res.status !== 200) throw new Error(`${node.serverId} repo-state answered ${res.status}: ${res.text}`);
  return res.body as RepoVersionAnswer;
}

/**
 * Asserts, without waiting, that every running node at the newest generation holds exactly the same
 * refs and HEAD on disk, and that `git fsck` passes on every node's copy (running or not). Returns the
 * agreed state and generation.
 */
export async function expectReplicasAgree(cluster: Cluster, git: GitClient, repoId: string): Promise<ReplicaState & { generation: number; current: TestNode[] }> {
  const running = cluster.nodes.filter((n) => n.running);
  const versions = await Promise.all(running.map((n) => repoVersion(n, repoId)));
  const newest = Math.max(...versions.map((v) => v.generation));
  const current = running.filter((_, i) => versions[i]!.generation === newest);
  const states = await Promise.all(current.map((n) => diskState(git, n, repoId)));
  for (let i = 1; i < states.length; i += 1) {
    expect(states[i], `${current[i]!.serverId} vs ${current[0]!.serverId} (both at generation ${newest})`).to.deep.equal(states[0]);
  }
  for (const node of cluster.nodes) await expectFsckClean(git, node, repoId);
  return { ...states[0]!, generation: newest, current };
}

/**
 * Waits until every running node is at the same generation with identical refs and HEAD on disk
 * (a replica that was away catches up by itself), then checks fsck everywhere and that no node keeps
 * a shipped pack in DATA_DIR/incoming or outgoing. Returns the state.
 */
export async function expectConverged(cluster: Cluster, git: GitClient, repoId: string, timeoutMs = 20_000): Promise<ReplicaState & { generation: number }> {
  const running = cluster.nodes.filter((n) => n.running);
  const agreed = await eventually(async () => {
    const versions = await Promise.all(running.map((n) => repoVersion(n, repoId)));
    const gens = versions.map((v) => v.generation);
    expect(new Set(gens).size, `generations ${gens.join(', ')}`).to.equal(1);
    const states = await Promise.all(running.map((n) => diskState(git, n, repoId)));
    for (let i = 1; i < states.length; i += 1) expect(states[i], `${running[i]!.serverId} vs ${running[0]!.serverId}`).to.deep.equal(states[0]);
    return { ...states[0]!, generation: gens[0]! };
  }, timeoutMs);
  for (const node of cluster.nodes) await expectFsckClean(git, node, repoId);
  // Once every push has settled, no shipped pack waits anywhere: installed, discarded or dropped.
  await eventually(async () => {
    for (const node of running) {
      for (const dir of ['incoming', 'outgoing']) {
        const entries = await fs.readdir(path.join(node.dataDir, dir)).catch(() => []);
        expect(entries, `${node.serverId} DATA_DIR/${dir}`).to.deep.equal([]);
      }
    }
  }, timeoutMs);
  return agreed;
}

/** Waits until every running node sees exactly the other running nodes as reachable (push routing follows this view). */
export async function waitForView(cluster: Cluster): Promise<void> {
  const running = cluster.nodes.filter((n) => n.running);
  await eventually(async () => {
    for (const node of running) {
      const res = await node.health();
      expect(res.body?.peers_reachable, `${node.serverId} reachable peers`).to.equal(running.length - 1);
    }
  }, 15_000);
}

/** Starts a stopped node with extra environment, waiting until it answers /health. */
export async function startWith(node: TestNode, env: Record<string, string>): Promise<void> {
  node.spawn(env);
  await eventually(async () => {
    expect(node.running, `${node.serverId} exited during start:\n${node.logTail()}`).to.equal(true);
    const res = await http(`${node.url}/health`, { timeoutMs: 1000 });
    expect(res.status).to.equal(200);
  }, 15_000, 25);
}

/** A repo id `<owner>/<prefix>-<k>` whose pushes the cluster routes to `coordinator` while all nodes are up. */
export function repoCoordinatedBy(cluster: Cluster, coordinator: TestNode, owner: string, prefix: string): string {
  const urls = cluster.nodes.map((n) => n.url);
  for (let k = 0; k < 1000; k += 1) {
    const repoId = `${owner}/${prefix}-${k}`;
    if (pickCoordinator(repoId, urls) === coordinator.url) return repoId;
  }
  throw new Error(`no repo name routes to ${coordinator.serverId}`);
}

/** Creates a repo through `node` and waits until every running node serves it. */
export async function createRepo(cluster: Cluster, node: TestNode, repoId: string): Promise<void> {
  const res = await node.createRepo(repoId);
  expect(res.status, res.text).to.equal(201);
  await eventually(async () => {
    for (const n of cluster.nodes.filter((x) => x.running)) expect((await n.getRepo(repoId)).status, n.serverId).to.equal(200);
  });
}

/** What a successful push's `remote:` lines say about replication. */
export interface ReplicationReport {
  confirmed: number;
  total: number;
  quorum: number;
  generation: number;
  /** Prepared nodes the answer did not wait for. */
  applying: string[];
  /** Nodes whose vote had not come when the client was answered. */
  unanswered: string[];
  behind: string[];
}

export function replicationReport(stderr: string): ReplicationReport {
  const m = /remote: quorum-git: replicated to (\d+)\/(\d+) nodes \(quorum (\d+)\), generation (\d+)/.exec(stderr);
  if (!m) throw new Error(`no replication report in:\n${stderr}`);
  const behind = /remote: quorum-git: behind, will catch up: (.*)/.exec(stderr);
  const applying = /remote: quorum-git: still applying: (.*)/.exec(stderr);
  const unanswered = /remote: quorum-git: not answered yet, will apply it or catch up: (.*)/.exec(stderr);
  return {
    confirmed: Number(m[1]),
    total: Number(m[2]),
    quorum: Number(m[3]),
    generation: Number(m[4]),
    applying: applying ? applying[1]!.trim().split(', ') : [],
    unanswered: unanswered ? unanswered[1]!.trim().split(', ') : [],
    behind: behind ? behind[1]!.trim().split(', ') : [],
  };
}

/** Asserts that git exited 0 and the node reported replication; returns the report. */
export function expectPushed(result: GitResult, what = 'push'): ReplicationReport {
  expect(result.code, `${what}: ${result.stderr}`).to.equal(0);
  return replicationReport(result.stderr);
}

/** A local working clone of a repo from `node`. */
export async function cloneLocal(git: GitClient, node: TestNode, repoId: string, prefix: string): Promise<string> {
  const dir = path.join(await git.tempDir(prefix), 'work');
  await git.ok(['clone', '--quiet', node.gitUrl(repoId), dir]);
  return dir;
}

/** Writes a file and commits it; returns the new commit's oid. Commit dates are fixed, so the message keeps commits apart. */
export async function commitFile(git: GitClient, dir: string, name: string, content: string, message = `${name}: ${content.slice(0, 40)}`): Promise<string> {
  await fs.mkdir(path.dirname(path.join(dir, name)), { recursive: true });
  await fs.writeFile(path.join(dir, name), content);
  await git.ok(['add', '--', name], { cwd: dir });
  await git.ok(['commit', '--quiet', '-m', message], { cwd: dir });
  return (await git.ok(['rev-parse', 'HEAD'], { cwd: dir })).trim();
}

/** `git -c http.extraHeader=<secret header>`: the client acts as a peer, so its push is served (and coordinated) by that very node. */
export function asPeer(cluster: Cluster, args: string[]): string[] {
  return ['-c', `http.extraHeader=${SECRET_HEADER}: ${cluster.secret}`, ...args];
}

// ---------------------------------------------------------------------------------------------
// Large pack

/**
 * Writes `sizeBytes` of deterministic, incompressible bytes: the AES-256-CTR keystream of a key
 * derived from `seed` by SHA-256 (same seed, same bytes, on every run).
 */
export async function writeSeededBytes(file: string, sizeBytes: number, seed: string): Promise<void> {
  const key = createHash('sha256').update(`key:${seed}`).digest();
  const iv = createHash('sha256').update(`iv:${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-256-ctr', key, iv);
  const out = createWriteStream(file);
  const zeros = Buffer.alloc(1024 * 1024);
  for (let written = 0; written < sizeBytes; written += zeros.length) {
    const chunk = cipher.update(zeros.subarray(0, Math.min(zeros.length, sizeBytes - written)));
    if (!out.write(chunk)) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
}

function statusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} for pid ${pid}`);
  return Number(m[1]);
}

/**
 * Samples the resident memory of node processes while `work` runs. The peak per node is the larger of
 * the sampled VmRSS and, when it grew during the work, the kernel's high-water mark VmHWM (which
 * catches a spike between two samples). Returns bytes above the RSS measured just before.
 */
export async function peakRssGrowth<T>(nodes: TestNode[], work: () => Promise<T>, intervalMs = 20): Promise<{ result: T; growthBytes: number[] }> {
  const pids = nodes.map((n) => n.pid);
  const baseline = pids.map((p) => statusKb(p, 'VmRSS'));
  const hwmBefore = pids.map((p) => statusKb(p, 'VmHWM'));
  const sampled = [...baseline];
  const timer = setInterval(() => {
    pids.forEach((p, i) => {
      try {
        sampled[i] = Math.max(sampled[i]!, statusKb(p, 'VmRSS'));
      } catch {
        // the process is gone; the spec notices on its own
      }
    });
  }, intervalMs);
  let result: T;
  try {
    result = await work();
  } finally {
    clearInterval(timer);
  }
  const growthBytes = pids.map((p, i) => {
    const hwm = statusKb(p, 'VmHWM');
    const peak = hwm > hwmBefore[i]! ? Math.max(hwm, sampled[i]!) : sampled[i]!;
    return (peak - baseline[i]!) * 1024;
  });
  return { result, growthBytes };
}

// ---------------------------------------------------------------------------------------------
// Holding a push between its ref advertisement and its pack

/**
 * A loopback HTTP proxy in front of one node that passes everything through at once, except the
 * POST of git-receive-pack, which it holds until `release()`. A git push through it has seen the refs
 * (GET info/refs) but sent nothing: another push can land in between, deterministically.
 */
export class PushGate {
  readonly url: string;
  private readonly server: nodeHttp.Server;
  private readonly held: (() => void)[] = [];
  private heldWaiters: (() => void)[] = [];
  private open = false;

  private constructor(server: nodeHttp.Server, url: string) {
    this.server = server;
    this.url = url;
  }

  static async start(target: TestNode, extraHeaders: Record<string, string> = {}): Promise<PushGate> {
    const upstream = new URL(target.url);
    let gate: PushGate | undefined;
    const server = nodeHttp.createServer((req, res) => {
      const forward = (): void => {
        const out = nodeHttp.request(
          { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: { ...req.headers, ...extraHeaders, host: upstream.host } },
          (answer) => {
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            answer.pipe(res);
          },
        );
        out.on('error', () => res.destroy());
        req.pipe(out);
      };
      if (req.method === 'POST' && req.url?.endsWith('/git-receive-pack') && !gate!.open) {
        gate!.held.push(forward);
        for (const w of gate!.heldWaiters.splice(0)) w();
      } else {
        forward();
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const { port } = server.address() as AddressInfo;
    gate = new PushGate(server, `http://127.0.0.1:${port}`);
    return gate;
  }

  /** Git URL of a repo through this gate. */
  gitUrl(repoId: string): string {
    return `${this.url}/${repoId}.git`;
  }

  /** Resolves once `count` receive-pack POSTs are being held. */
  async waitHeld(count = 1, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.held.length < count) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`only ${this.held.length} of ${count} pushes reached the gate`);
      await Promise.race([new Promise<void>((resolve) => this.heldWaiters.push(resolve)), sleepMs(left)]);
    }
  }

  /** Lets every held push through, and every later one. */
  release(): void {
    this.open = true;
    for (const forward of this.held.splice(0)) forward();
  }

  async close(): Promise<void> {
    this.release();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function sleepMs(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** The sum of every sample of `name` in Prometheus text whose labels include `labels` (0 when there is none). */
export function metricTotal(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found = Object.fromEntries([...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) sum += Number(match[3]);
  }
  return sum;
}

/** A node's GET /metrics, checked to be Prometheus text. */
export async function scrapeMetrics(node: TestNode): Promise<string> {
  const res = await http(`${node.url}/metrics`);
  expect(res.status, res.text).to.equal(200);
  expect(res.headers.get('content-type')).to.equal('text/plain; version=0.0.4; charset=utf-8');
  return res.text;
}
