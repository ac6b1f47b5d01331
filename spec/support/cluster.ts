import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, promises as fs, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import nodeHttp from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS } from '../../lib/runtime.js';

// Harness for integration specs: real `quorum-git serve` processes on free loopback ports with temp
// data dirs, the real git binary with an isolated HOME, and small HTTP and polling helpers.
//
// Each node's stdout and stderr go to <root>/<server-id>.log (appended across restarts), so a failing
// spec can print the tail. Every spawned node is also killed when the mocha process exits, so a crashed
// run never leaves servers behind.

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'lib', 'cli.js');

/** Timeouts short enough for specs, long enough for a loaded 2-core CI machine. */
export const SPEC_NODE_ENV: Readonly<Record<string, string>> = {
  PREPARE_TIMEOUT_MS: '1000',
  COMMIT_TIMEOUT_MS: '1000',
  SYNC_INTERVAL_MS: '200',
  HEARTBEAT_INTERVAL_MS: '200',
  PEER_TIMEOUT_MS: '1000',
};
export const SYNC_INTERVAL_MS = Number(SPEC_NODE_ENV.SYNC_INTERVAL_MS);

const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;

const spawned = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of spawned) child.kill('SIGKILL');
});

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
export async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i += 1) {
      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve());
      });
      ports.push((server.address() as net.AddressInfo).port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

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
  body?: string;
  headers?: Record<string, string>;
  timeoutMs?: number;
}

export async function http(url: string, options: HttpOptions = {}): Promise<HttpResult> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  let body: string | undefined = options.body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(url, {
    method: options.method ?? (body === undefined ? 'GET' : 'POST'),
    headers,
    body,
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
// Nodes and clusters

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class TestNode {
  readonly index: number;
  readonly serverId: string;
  readonly port: number;
  readonly url: string;
  readonly dataDir: string;
  readonly logFile: string;
  readonly env: Record<string, string>;
  private child: ChildProcess | undefined;
  private exited: Promise<ExitInfo> | undefined;

  constructor(init: { index: number; serverId: string; port: number; dataDir: string; logFile: string; env: Record<string, string> }) {
    this.index = init.index;
    this.serverId = init.serverId;
    this.port = init.port;
    this.url = `http://127.0.0.1:${init.port}`;
    this.dataDir = init.dataDir;
    this.logFile = init.logFile;
    this.env = init.env;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  get pid(): number {
    if (this.child?.pid === undefined) throw new Error(`${this.serverId} is not running`);
    return this.child.pid;
  }

  get reposDir(): string {
    return path.join(this.dataDir, 'repos');
  }

  /** Where this node keeps a repo's bare directory (DATA_DIR/repos/<owner>/<name>.git). */
  repoDir(repoId: string): string {
    const [owner, name] = repoId.split('/') as [string, string];
    return path.join(this.reposDir, owner, `${name}.git`);
  }

  /** Spawns the process without waiting for it to listen. */
  spawn(extraEnv: Record<string, string> = {}): ChildProcess {
    if (this.child) throw new Error(`${this.serverId} is already running`);
    const out = openSync(this.logFile, 'a');
    const child = spawn(process.execPath, [...NODE_FLAGS, CLI, 'serve'], {
      env: { ...process.env, LOG_LEVEL: 'info', ...this.env, ...extraEnv },
      stdio: ['ignore', out, out],
    });
    closeSync(out);
    spawned.add(child);
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        spawned.delete(child);
        if (this.child === child) this.child = undefined;
        resolve({ code, signal });
      });
    });
    return child;
  }

  /** Starts the node and waits until it answers /health. */
  async start(): Promise<void> {
    this.spawn();
    const exited = this.exited!;
    let gone: ExitInfo | undefined;
    void exited.then((info) => (gone = info));
    await eventually(
      async () => {
        if (gone) return;
        const res = await http(`${this.url}/health`, { timeoutMs: 1000 });
        if (res.status !== 200) throw new Error(`health answered ${res.status}`);
      },
      START_TIMEOUT_MS,
      25,
    );
    if (gone) throw new Error(`${this.serverId} exited during start (${gone.signal ?? gone.code}):\n${this.logTail()}`);
  }

  /** SIGTERM, then waits for the process to exit (SIGKILL if it does not in time). */
  async stop(): Promise<ExitInfo | undefined> {
    return this.signal('SIGTERM');
  }

  /** SIGKILL: a crash. Nothing the node had not fsynced survives. */
  async kill(): Promise<ExitInfo | undefined> {
    return this.signal('SIGKILL');
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Resolves when the process exits; for nodes expected to stop on their own. */
  waitForExit(): Promise<ExitInfo> {
    if (!this.exited) throw new Error(`${this.serverId} was never started`);
    return this.exited;
  }

  private async signal(signal: NodeJS.Signals): Promise<ExitInfo | undefined> {
    const child = this.child;
    if (!child) return undefined;
    const exited = this.exited!;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Processes working for this node: its children, and any process whose working directory is inside
   * its DATA_DIR (git serving a repo, including grandchildren such as pack-objects that outlive their
   * parent). Reads /proc, so Linux only.
   */
  processes(): { pid: number; ppid: number; command: string }[] {
    const self = this.child?.pid;
    const out: { pid: number; ppid: number; command: string }[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        let cwd = '';
        try {
          cwd = readlinkSync(`/proc/${pid}/cwd`);
        } catch {
          // exited meanwhile, or not ours to read
        }
        if ((self !== undefined && ppid === self) || cwd === this.dataDir || cwd.startsWith(`${this.dataDir}/`)) {
          const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
          out.push({ pid, ppid, command });
        }
      } catch {
        // the process exited while we looked
      }
    }
    return out;
  }

  /** Everything this node has logged so far, across restarts. */
  logText(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** The last lines of this node's log. */
  logTail(lines = 40): string {
    try {
      return readFileSync(this.logFile, 'utf8').split('\n').slice(-lines - 1).join('\n');
    } catch {
      return '(no log)';
    }
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

  private constructor(root: string, nodes: TestNode[], secret: string) {
    this.root = root;
    this.nodes = nodes;
    this.secret = secret;
  }

  /** A cluster of `size` nodes on free ports, each with its own temp DATA_DIR; started unless told otherwise. */
  static async create(size: number, options: ClusterOptions = {}): Promise<Cluster> {
    // realpath: /proc reports working directories resolved, and processes() compares against them.
    const root = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'quorum-git-spec-')));
    const ports = await freePorts(size);
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const secret = randomBytes(16).toString('hex');
    const nodes = ports.map((port, i) => {
      const serverId = `node-${i + 1}`;
      const dataDir = path.join(root, serverId);
      return new TestNode({
        index: i,
        serverId,
        port,
        dataDir,
        logFile: path.join(root, `${serverId}.log`),
        env: {
          ...SPEC_NODE_ENV,
          ...(options.env ?? {}),
          PORT: String(port),
          HOST: '127.0.0.1',
          SERVER_ID: serverId,
          DATA_DIR: dataDir,
          PEER_URLS: urls.filter((_, j) => j !== i).join(','),
          CLUSTER_SECRET: secret,
        },
      });
    });
    const cluster = new Cluster(root, nodes, secret);
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
    const node = this.nodes[n - 1];
    if (!node) throw new Error(`no node ${n} in a cluster of ${this.nodes.length}`);
    return node;
  }

  async startAll(): Promise<void> {
    await Promise.all(this.nodes.filter((n) => !n.running).map((n) => n.start()));
  }

  /** Starts every stopped node and waits until each sees all its peers: the state every spec begins from. */
  async heal(): Promise<void> {
    await this.startAll();
    await eventually(async () => {
      for (const node of this.nodes) {
        const res = await node.health();
        if (res.body?.peers_reachable !== this.nodes.length - 1) throw new Error(`${node.serverId} does not reach all its peers yet`);
      }
    }, 15_000);
  }

  /** Set when a spec using this cluster failed: destroy() then keeps the data dirs and logs. */
  failed = false;

  /** Kills every node and removes the temp dirs, unless a spec failed (then says where they are). */
  async destroy(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.kill()));
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
