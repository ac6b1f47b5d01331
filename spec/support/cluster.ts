import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import nodeHttp from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { LocalCluster, LocalNode, freePorts as localFreePorts, type LaunchOptions, type LocalNodeInit } from '../../lib/cli/local-cluster.js';
import { NODE_FLAGS } from '../../lib/base/runtime.js';

// Harness for integration specs: real `quorum-git serve` processes on free loopback ports with temp
// data dirs (lib/cli/local-cluster.ts, the one launcher of specs, benchmarks and `npm start`), the real git
// binary with an isolated HOME, and small HTTP and polling helpers.
//
// Each node's stdout and stderr go to <root>/<server-id>.log (appended across restarts), so a failing
// spec can print the tail. Every spawned node is also killed when the mocha process exits, so a crashed
// run never leaves servers behind.

/** Timeouts short enough for specs, long enough for a loaded 2-core CI machine. */
export const SPEC_NODE_ENV: Readonly<Record<string, string>> = {
  PREPARE_TIMEOUT_MS: '1000',
  COMMIT_TIMEOUT_MS: '1000',
  SYNC_INTERVAL_MS: '200',
  // The divergence check (a background scrub) every second, not at every 200 ms round: each check
  // spawns a git per repo on every node, which at every round kept this 2-core machine busy.
  VERIFY_INTERVAL_MS: '1000',
  HEARTBEAT_INTERVAL_MS: '200',
  PEER_TIMEOUT_MS: '1000',
  // 3 s by default (a busy peer is waited for rather than a clone refused); specs that pause or cut off
  // peers would wait that long on every read.
  READ_CHECK_TIMEOUT_MS: '1000',
};
export const SYNC_INTERVAL_MS = Number(SPEC_NODE_ENV.SYNC_INTERVAL_MS);

/**
 * Long two-phase-commit timeouts, for specs whose nodes stay up (or whose stopped nodes refuse
 * connections at once) and so never wait for a protocol timer: they only keep a loaded 2-core machine's
 * slow prepare (a large pack, thousands of refs, scrypt) from failing a push. A spec that must see a
 * timer fire keeps SPEC_NODE_ENV's short ones.
 */
export const LONG_2PC_ENV: Readonly<Record<string, string>> = {
  PREPARE_TIMEOUT_MS: '15000',
  COMMIT_TIMEOUT_MS: '5000',
  PEER_TIMEOUT_MS: '15000',
};

const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;
const HEAL_TIMEOUT_MS = 15_000;

// ---------------------------------------------------------------------------------------------
// Small helpers

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Calls `fn` until it returns without throwing, and returns its value; after `timeoutMs` throws the last
 * error. For waiting on convergence (a restarted node catching up), never for asserting how fast.
 */
export async function eventually<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() >= deadline) {
        const message = err instanceof Error ? err.message : String(err);
        throw new Error(`still failing after ${timeoutMs} ms: ${message}`, { cause: err });
      }
    }
    await sleep(intervalMs);
  }
}

/** Free loopback ports, all distinct: every listener stays open until all are allocated. */
export const freePorts = (count: number): Promise<number[]> => localFreePorts(count);

export interface HttpResult {
  status: number;
  headers: Headers;
  text: string;
  /** The parsed JSON body, or undefined when the body is not JSON. */
  body: any;
}

export interface HttpOptions {
  method?: string;
  /** Sent as JSON (with a JSON content-type); `body` is sent as is. */
  json?: unknown;
  body?: string | Uint8Array;
  headers?: Record<string, string>;
  timeoutMs?: number;
}

export async function http(url: string, options: HttpOptions = {}): Promise<HttpResult> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  let body: string | Uint8Array | undefined = options.body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(url, {
    method: options.method ?? (body === undefined ? 'GET' : 'POST'),
    headers,
    body: typeof body === 'string' || body === undefined ? body : new Uint8Array(body),
    signal: AbortSignal.timeout(options.timeoutMs ?? 15_000),
  });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, text, body: parsed };
}

/** Every file and directory under `dir`, relative to it, sorted; [] when `dir` does not exist. */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) {
      const child = rel === '' ? e.name : `${rel}/${e.name}`;
      out.push(child);
      if (e.isDirectory()) await walk(child);
    }
  };
  await walk('');
  return out.sort();
}

export async function pathExists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// git

export interface GitResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface GitRunOptions {
  cwd?: string;
  input?: string;
  timeoutMs?: number;
}

/**
 * The real git binary with its own HOME and no system config, fixed identity and dates (object ids are
 * stable), and no prompts. Use one per spec file; `dispose` removes its directory.
 */
export class GitClient {
  readonly home: string;
  readonly env: NodeJS.ProcessEnv;

  private constructor(home: string) {
    this.home = home;
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GIT_')));
    this.env = {
      ...inherited,
      HOME: home,
      XDG_CONFIG_HOME: path.join(home, '.config'),
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_TERMINAL_PROMPT: '0',
      GIT_AUTHOR_NAME: 'Spec Author',
      GIT_AUTHOR_EMAIL: 'author@example.com',
      GIT_AUTHOR_DATE: '2024-01-01T00:00:00Z',
      GIT_COMMITTER_NAME: 'Spec Committer',
      GIT_COMMITTER_EMAIL: 'committer@example.com',
      GIT_COMMITTER_DATE: '2024-01-01T00:00:00Z',
      LC_ALL: 'C',
    };
  }

  static async create(): Promise<GitClient> {
    const home = await fs.mkdtemp(path.join(os.tmpdir(), 'quorum-git-spec-home-'));
    await fs.writeFile(path.join(home, '.gitconfig'), '[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n');
    return new GitClient(home);
  }

  /** A fresh directory under this client's HOME. */
  async tempDir(prefix: string): Promise<string> {
    return fs.mkdtemp(path.join(this.home, `${prefix}-`));
  }

  run(args: string[], options: GitRunOptions = {}): Promise<GitResult> {
    return new Promise((resolve, reject) => {
      const child = spawn('git', args, { cwd: options.cwd ?? this.home, env: this.env, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
      child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
      const timer = setTimeout(() => {
        stderr += `\n[spec harness] git ${args.join(' ')} timed out after ${options.timeoutMs ?? 60_000} ms; killed`;
        child.kill('SIGKILL');
      }, options.timeoutMs ?? 60_000);
      child.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
      child.stdin.on('error', () => undefined);
      child.stdin.end(options.input ?? '');
    });
  }

  /** Like `run`, but throws with git's stderr unless git exits 0. */
  async ok(args: string[], options: GitRunOptions = {}): Promise<string> {
    const result = await this.run(args, options);
    if (result.code !== 0) throw new Error(`git ${args.join(' ')} exited ${result.code}: ${result.stderr.trim()}`);
    return result.stdout;
  }

  /**
   * Starts git in its own process group, so that the spec can stop or kill it together with its helpers
   * (git-remote-http, pack-objects, index-pack). Output is discarded.
   */
  spawnDetached(args: string[], cwd?: string): ChildProcess {
    return spawn('git', args, { cwd: cwd ?? this.home, env: this.env, stdio: 'ignore', detached: true });
  }

  /** A new local repo with one commit on main; returns its path and the commit's oid. */
  async commitRepo(prefix: string, files: Record<string, string | Buffer> = { 'README.md': '# hello\n' }): Promise<{ dir: string; oid: string }> {
    const dir = await this.tempDir(prefix);
    await this.ok(['init', '--quiet', dir]);
    for (const [name, content] of Object.entries(files)) await fs.writeFile(path.join(dir, name), content);
    await this.ok(['add', '--all'], { cwd: dir });
    await this.ok(['commit', '--quiet', '-m', `initial commit of ${prefix}`], { cwd: dir });
    return { dir, oid: (await this.ok(['rev-parse', 'HEAD'], { cwd: dir })).trim() };
  }

  async dispose(): Promise<void> {
    await fs.rm(this.home, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Nodes and clusters: lib/cli/local-cluster.ts runs the processes; this adds the specs' defaults and helpers.

export type { ExitInfo } from '../../lib/cli/local-cluster.js';

/** How a spec that builds its own nodes (TLS, secure defaults) launches them: as Cluster.create does. */
export function specLaunch(): LaunchOptions {
  return { baseEnv: process.env, nodeArgs: NODE_FLAGS, log: 'file', group: false, startTimeoutMs: START_TIMEOUT_MS, stopTimeoutMs: STOP_TIMEOUT_MS };
}

export class TestNode extends LocalNode {
  constructor(init: LocalNodeInit) {
    super(init);
  }

  get reposDir(): string {
    return path.join(this.dataDir, 'repos');
  }

  /** Where this node keeps a repo's bare directory (DATA_DIR/repos/<owner>/<name>.git). */
  repoDir(repoId: string): string {
    const [owner, name] = repoId.split('/') as [string, string];
    return path.join(this.reposDir, owner, `${name}.git`);
  }

  // Management API shortcuts ---------------------------------------------------------------------

  createRepo(repoId: string): Promise<HttpResult> {
    return http(`${this.url}/repos`, { json: { repo_id: repoId } });
  }

  getRepo(repoId: string): Promise<HttpResult> {
    return http(`${this.url}/repos/${repoId}`);
  }

  deleteRepo(repoId: string): Promise<HttpResult> {
    return http(`${this.url}/repos/${repoId}`, { method: 'DELETE' });
  }

  async listRepos(): Promise<string[]> {
    const res = await http(`${this.url}/repos`);
    if (res.status !== 200) throw new Error(`GET /repos answered ${res.status}: ${res.text}`);
    return res.body.repos as string[];
  }

  health(): Promise<HttpResult> {
    return http(`${this.url}/health`);
  }

  /**
   * A request to the internal API, authenticated with the cluster secret, as if sent by the node at
   * `from` (x-quorum-node; by default this node's first peer).
   */
  internal(pathname: string, json?: unknown, from: string = this.env.PEER_URLS!.split(',')[0]!): Promise<HttpResult> {
    return http(`${this.url}${pathname}`, {
      headers: { 'x-quorum-secret': this.env.CLUSTER_SECRET!, 'x-quorum-node': from },
      ...(json === undefined ? {} : { json }),
    });
  }

  /** Git clone URL of a repo on this node. */
  gitUrl(repoId: string, suffix = '.git'): string {
    return `${this.url}/${repoId}${suffix}`;
  }
}

export interface ClusterOptions {
  /** Environment for every node, on top of SPEC_NODE_ENV. */
  env?: Record<string, string>;
  /** Start every node (default), or none: the spec starts them itself. */
  start?: boolean;
}

export class Cluster {
  readonly root: string;
  readonly nodes: TestNode[];
  readonly secret: string;

  private constructor(private readonly local: LocalCluster<TestNode>) {
    this.root = local.root;
    this.nodes = local.nodes;
    this.secret = local.secret;
  }

  /** A cluster of `size` nodes on free ports, each with its own temp DATA_DIR; started unless told otherwise. */
  static async create(size: number, options: ClusterOptions = {}): Promise<Cluster> {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'quorum-git-spec-'));
    const local = await LocalCluster.create<TestNode>({
      size,
      root,
      env: { LOG_LEVEL: 'info', ...SPEC_NODE_ENV, ...(options.env ?? {}) },
      startTimeoutMs: START_TIMEOUT_MS,
      stopTimeoutMs: STOP_TIMEOUT_MS,
      makeNode: (init) => new TestNode(init),
    });
    const cluster = new Cluster(local);
    if (options.start ?? true) {
      try {
        await cluster.startAll();
      } catch (err) {
        await cluster.destroy();
        throw err;
      }
    }
    return cluster;
  }

  node(n: number): TestNode {
    return this.local.node(n);
  }

  /** Starts every stopped node and waits until each answers /health. */
  async startAll(): Promise<void> {
    await this.local.start({ peers: false });
  }

  /** Starts every stopped node and waits until each sees all its peers: the state every spec begins from. */
  async heal(): Promise<void> {
    await this.startAll();
    await this.local.waitReady({ timeoutMs: HEAL_TIMEOUT_MS });
  }

  /** Set when a spec using this cluster failed: destroy() then keeps the data dirs and logs. */
  failed = false;

  /** Kills every node and removes the temp dirs, unless a spec failed (then says where they are). */
  async destroy(): Promise<void> {
    await this.local.kill();
    if (this.failed) {
      process.stderr.write(`[spec harness] a spec failed: node data dirs and logs kept in ${this.root}\n`);
      return;
    }
    await fs.rm(this.root, { recursive: true, force: true });
  }

  /** Log tails of every node, for a failed spec. */
  logTails(lines = 30): string {
    return this.nodes.map((n) => `----- ${n.serverId} (${n.logFile}) -----\n${n.logTail(lines)}`).join('\n');
  }

  /** What every node says about a repo: [status of GET /repos/<id>, bare dir present] per node. */
  async repoEverywhere(repoId: string): Promise<{ status: number; onDisk: boolean }[]> {
    return Promise.all(
      this.nodes.map(async (n) => ({ status: (await n.getRepo(repoId)).status, onDisk: await pathExists(n.repoDir(repoId)) })),
    );
  }
}

/**
 * mocha `afterEach` body: prints the log tails of a cluster when the spec that just ran failed.
 * Use as `afterEach(function () { printLogsOnFailure(this, cluster); })`.
 */
/**
 * The hooks every integration `describe` wants around its cluster: before all its specs, a cluster of
 * `size` nodes that all see each other and an isolated git client, handed to `ready`; after a failed
 * spec, the tail of every node's log; after each spec, with `healAfterEach`, every stopped node started
 * again (for specs that stop nodes); after all, everything torn down.
 */
export function withCluster(
  size: number,
  options: { env?: Record<string, string>; healAfterEach?: boolean },
  ready: (cluster: Cluster, git: GitClient) => void,
): void {
  let cluster: Cluster | undefined;
  let git: GitClient | undefined;
  before(async function () {
    [cluster, git] = await Promise.all([Cluster.create(size, options.env ? { env: options.env } : {}), GitClient.create()]);
    await cluster.heal();
    ready(cluster, git);
  });
  afterEach(async function () {
    printLogsOnFailure(this, cluster);
    if (options.healAfterEach) await cluster?.heal();
  });
  after(async function () {
    await Promise.all([cluster?.destroy(), git?.dispose()]);
  });
}

export function printLogsOnFailure(ctx: Mocha.Context, cluster: Cluster | undefined): void {
  if (cluster && ctx.currentTest?.state === 'failed') {
    cluster.failed = true;
    process.stderr.write(`\n${cluster.logTails()}\n`);
  }
}

/**
 * A request whose path is sent byte for byte. fetch() normalizes paths (it turns `%2e%2e` into a
 * dot-segment and resolves it), so traversal attempts need this.
 */
export function rawHttp(baseUrl: string, method: string, rawPath: string, body?: string): Promise<HttpResult> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const req = nodeHttp.request({ host: hostname, port, method, path: rawPath, timeout: 15_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = text === '' ? undefined : JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        const headers = new Headers();
        for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') headers.set(k, v);
        resolve({ status: res.statusCode ?? 0, headers, text, body: parsed });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${rawPath} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}
