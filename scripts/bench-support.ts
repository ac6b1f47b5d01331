import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, promises as fs, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { DEFAULT_FIXTURE, ensureFixture, formatKiB, type FixtureInfo, type FixtureParams } from './gen-fixture.js';
import { LOOPBACK, LocalCluster, freePorts as localFreePorts, type LocalNode } from '../lib/cli/local-cluster.js';
import type { RepoStateAnswer } from '../lib/cluster/peer-client.js';
import { NODE_FLAGS } from '../lib/base/runtime.js';

// Shared by the benchmark scripts: free ports, a local cluster of real `quorum-git serve` processes
// (lib/cli/local-cluster.ts), helper processes that are always cleaned up (normal end, failure, Ctrl-C),
// running git with an isolated configuration, and timing statistics. Everything binds to 127.0.0.1 only.

export const HOST = LOOPBACK;
/** dist/scripts/ → repo root. */
export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

// ---------------------------------------------------------------------------------------------
// Cleanup: every child process and temp dir registered here is removed when the script ends, however
// it ends. Children are killed by their own pid (process group when detached), never by name.

const children = new Set<ChildProcess>();
/** Children spawned as leaders of their own process group: signals go to the whole group. */
const groups = new WeakSet<ChildProcess>();
/** Process groups not yet known to be gone, killed at exit even if their leader already exited. */
const groupPids = new Set<number>();

function signal(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    if (groups.has(child)) process.kill(-child.pid, sig);
    else child.kill(sig);
  } catch {
    // already gone
  }
}
const tempDirs = new Set<string>();
const cleanups: Array<() => Promise<void> | void> = [];
let cleaningUp: Promise<void> | undefined;

function killHard(child: ChildProcess): void {
  if (child.exitCode !== null || child.signalCode !== null) return;
  signal(child, 'SIGKILL');
}

/** Registers an async cleanup step, run (last registered first) before children are killed. */
export function onCleanup(fn: () => Promise<void> | void): void {
  cleanups.push(fn);
}

export function cleanup(): Promise<void> {
  cleaningUp ??= (async () => {
    for (const fn of cleanups.reverse()) {
      try {
        await withTimeout(Promise.resolve(fn()), 10_000, 'cleanup step');
      } catch (err) {
        process.stderr.write(`cleanup: ${(err as Error).message}\n`);
      }
    }
    await Promise.all([...children].map((c) => stopProcess(c, 3000)));
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  })();
  return cleaningUp;
}

process.on('exit', () => {
  // Last resort, synchronous: nothing may outlive the script.
  for (const child of children) killHard(child);
  for (const pid of groupPids) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  if (process.env.BENCH_KEEP_TMP !== '1') for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => {
    process.stderr.write(`\n${signal}: cleaning up\n`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** True when the module at `moduleUrl` is the script node was started with (not imported by `npm run bench`). */
export function isMain(moduleUrl: string): boolean {
  return process.argv[1] !== undefined && moduleUrl === pathToFileURL(path.resolve(process.argv[1])).href;
}

/** Runs main, always cleans up, exits non-zero on failure. A hard deadline bounds the whole run. */
export function runMain(name: string, main: () => Promise<void>, deadlineMs: number): void {
  const deadline = setTimeout(() => {
    process.stderr.write(`${name}: gave up after ${Math.round(deadlineMs / 1000)} s\n`);
    void cleanup().finally(() => process.exit(3));
  }, deadlineMs);
  deadline.unref();
  main().then(
    async () => {
      await cleanup();
      process.exit(0);
    },
    async (err: unknown) => {
      process.stderr.write(`${name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      await cleanup();
      process.exit(1);
    },
  );
}

export function makeTempDir(prefix: string): string {
  // Short paths: unix socket paths are limited to ~107 bytes.
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  if (process.env.BENCH_KEEP_TMP !== '1') tempDirs.add(dir);
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Processes

export interface SpawnedProcess {
  child: ChildProcess;
  /** Resolves with the exit code (or signal) when the process ends. */
  exited: Promise<number | string>;
  logFile?: string;
}

/**
 * Spawns a long-running helper whose stdout/stderr go to `logFile` (or are discarded). With `group`,
 * it leads its own process group and is stopped together with the workers it forks (nginx, fcgiwrap).
 */
export function spawnTracked(
  command: string,
  args: string[],
  options: SpawnOptions & { logFile?: string; group?: boolean } = {},
): SpawnedProcess {
  const { logFile, group, ...spawnOptions } = options;
  const child = spawn(command, args, {
    stdio: ['ignore', logFile ? 'pipe' : 'ignore', logFile ? 'pipe' : 'ignore'],
    detached: group === true,
    ...spawnOptions,
  });
  children.add(child);
  if (group && child.pid !== undefined) {
    groups.add(child);
    groupPids.add(child.pid);
  }
  if (logFile) {
    const out = createWriteStream(logFile, { flags: 'a' });
    child.stdout?.pipe(out, { end: false });
    child.stderr?.pipe(out, { end: false });
  }
  const exited = new Promise<number | string>((resolve) => {
    child.once('error', (err) => {
      children.delete(child);
      resolve(`spawn error: ${err.message}`);
    });
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve(signal ?? code ?? -1);
    });
  });
  return { child, exited, logFile };
}

/** SIGTERM (to the group for group leaders), then SIGKILL after `graceMs`. */
export async function stopProcess(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    // A group leader that is gone may have left workers behind.
    if (groups.has(child)) {
      signal(child, 'SIGKILL');
      if (child.pid !== undefined) groupPids.delete(child.pid);
    }
    return;
  }
  const done = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  signal(child, 'SIGTERM');
  const timer = setTimeout(() => killHard(child), graceMs);
  await Promise.race([done, sleep(graceMs + 1000)]);
  clearTimeout(timer);
  if (groups.has(child)) {
    signal(child, 'SIGKILL');
    if (child.pid !== undefined) groupPids.delete(child.pid);
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Runs a command to completion with a timeout; rejects on non-zero exit unless `allowFail`. The
 * command leads a process group of its own, and the timeout kills the group: a child it started
 * (git push's git-remote-http, blocked on a connection nobody answers) would otherwise keep its
 * output open after it was killed, and the run would wait for ever.
 */
export function run(
  command: string,
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; allowFail?: boolean; input?: string } = {},
): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? 120_000;
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    children.add(child);
    if (child.pid !== undefined) {
      groups.add(child);
      groupPids.add(child.pid);
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => err.push(c));
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(options.input ?? '');
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      signal(child, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      children.delete(child);
      reject(new Error(`${command}: ${e.message}`));
    });
    child.once('close', (code, sig) => {
      clearTimeout(timer);
      children.delete(child);
      // Whatever the command left running in its group goes with it.
      signal(child, 'SIGKILL');
      if (child.pid !== undefined) groupPids.delete(child.pid);
      const result: RunResult = {
        code: code ?? -1,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        ms: Number(process.hrtime.bigint() - started) / 1e6,
      };
      if (timedOut) reject(new Error(`${command} ${args.join(' ')}: timed out after ${timeoutMs} ms`));
      else if (result.code !== 0 && !options.allowFail) {
        reject(new Error(`${command} ${args.join(' ')} exited ${sig ?? code}: ${result.stderr.trim().slice(-2000)}`));
      } else resolve(result);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// git clients with no user or system configuration

/** An environment for git clients: isolated HOME, no system config, no prompts, no proxies. */
export function gitClientEnv(home: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  mkdirSync(home, { recursive: true });
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_TERMINAL_PROMPT: '0',
    GIT_ASKPASS: '',
    LANG: 'C',
    LC_ALL: 'C',
    ...extra,
  };
  return env;
}

export function git(args: string[], env: NodeJS.ProcessEnv, options: { cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return run('git', args, { env, cwd: options.cwd, timeoutMs: options.timeoutMs ?? 600_000 });
}

// ---------------------------------------------------------------------------------------------
// Ports and HTTP

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => (port ? resolve(port) : reject(new Error('no free port'))));
    });
  });
}

/** Distinct free ports (asked for all at once so the same one is not handed out twice). */
export const freePorts = (count: number): Promise<number[]> => localFreePorts(count, HOST);

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `check` until it returns true (errors count as false) or the deadline passes. */
export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number, intervalMs = 100): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    try {
      if (await check()) return;
    } catch (err) {
      if (err instanceof FatalWaitError) throw err;
      lastError = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${timeoutMs} ms${lastError ? ` (${lastError})` : ''}`);
    await sleep(intervalMs);
  }
}

export async function getJson(url: string, timeoutMs = 2000): Promise<{ status: number; body: unknown }> {
  return answer(await fetch(url, { signal: AbortSignal.timeout(timeoutMs) }));
}

export async function postJson(url: string, payload: unknown, timeoutMs = 30_000): Promise<{ status: number; body: unknown }> {
  return answer(
    await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(payload),
      signal: AbortSignal.timeout(timeoutMs),
    }),
  );
}

/** Status and body, parsed as JSON when it is JSON. */
async function answer(res: Response): Promise<{ status: number; body: unknown }> {
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) as unknown };
  } catch {
    return { status: res.status, body: text };
  }
}

// ---------------------------------------------------------------------------------------------
// A local cluster of real nodes (lib/cli/local-cluster.ts, the launcher specs and `npm start` use too)

/** A node of a benchmark's cluster: name (serverId), url, port, dataDir, logFile, env, running, pid. */
export type ClusterNode = LocalNode;

/** One replica's version of a repo, from a node's internal API (the type the nodes themselves use). */
export type { RepoStateAnswer } from '../lib/cluster/peer-client.js';

export interface Cluster {
  nodes: ClusterNode[];
  urls: string[];
  root: string;
  /** The cluster secret (for the internal API, e.g. repo-state). */
  secret: string;
  stop(): Promise<void>;
  /** Stops one node with `signal` (default SIGKILL: a crash) and waits until it is gone. */
  killNode(index: number, signal?: NodeJS.Signals): Promise<void>;
  /**
   * (Re)starts a stopped node on its port and data dir, with its environment plus `extraEnv` (kept for
   * later restarts), and waits until it answers /health and sees every peer.
   */
  startNode(index: number, extraEnv?: Record<string, string>): Promise<void>;
  /** A node's version of a repo (GET /internal/repo-state, with the cluster secret). */
  repoState(index: number, repoId: string): Promise<RepoStateAnswer>;
}

/**
 * Starts `size` nodes (`node dist/lib/cli/cli.js serve`) on free loopback ports with fresh data dirs under
 * a temp dir, and waits until every node answers /health and sees all its peers. Node logs (LOG_LEVEL
 * BENCH_LOG_LEVEL, default warn) go to <root>/node-<i>.log; BENCH_KEEP_TMP=1 keeps them.
 */
export async function startCluster(
  options: { size?: number; env?: Record<string, string>; nodeArgs?: string[]; readyTimeoutMs?: number } = {},
): Promise<Cluster> {
  const size = options.size ?? 3;
  // e.g. BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' (not allowed in NODE_OPTIONS).
  const nodeArgs = options.nodeArgs ?? [...NODE_FLAGS, ...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean)];
  const readyTimeoutMs = options.readyTimeoutMs ?? 30_000;
  const local = await LocalCluster.create({
    size,
    root: makeTempDir('qg-bench-'),
    host: HOST,
    env: { LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn', ...options.env },
    nodeArgs,
    cwd: PROJECT_ROOT,
    startTimeoutMs: readyTimeoutMs,
    stopTimeoutMs: 5000,
  });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    runningClusters.delete(stop);
    await local.stop();
  };
  onCleanup(stop);
  runningClusters.add(stop);
  const nodeAt = (index: number): ClusterNode => {
    const node = local.nodes[index];
    if (!node) throw new Error(`no node ${index} in a cluster of ${size}`);
    return node;
  };
  const killNode = async (index: number, sig: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    const node = nodeAt(index);
    if (sig === 'SIGKILL') await node.kill();
    else if (sig === 'SIGTERM') await node.stop();
    else if (node.running) {
      const exited = node.waitForExit();
      node.signal(sig);
      await withTimeout(exited, 10_000, `${node.serverId} to stop`);
    }
  };
  const startNode = async (index: number, extraEnv: Record<string, string> = {}): Promise<void> => {
    if (stopped) throw new Error('the cluster was stopped');
    const node = nodeAt(index);
    if (node.running) throw new Error(`${node.serverId} is still running`);
    Object.assign(node.env, extraEnv);
    await node.start({}, { peers: size - 1 });
  };
  const repoState = async (index: number, repoId: string): Promise<RepoStateAnswer> => {
    const node = nodeAt(index);
    const res = await fetch(`${node.url}/internal/repo-state/${repoId}?refs=0`, {
      headers: { 'x-quorum-secret': local.secret },
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`${node.serverId} repo-state ${repoId}: ${res.status} ${text.slice(0, 300)}`);
    return JSON.parse(text) as RepoStateAnswer;
  };
  await local.start();
  return { nodes: local.nodes, urls: local.urls, root: local.root, secret: local.secret, stop, killNode, startNode, repoState };
}

const runningClusters = new Set<() => Promise<void>>();

/** Stops every cluster still running (`npm run bench` after a section, also one that failed half-way). */
export async function stopRunningClusters(): Promise<void> {
  await Promise.all([...runningClusters].map((stop) => stop()));
}

/** Resets the peak resident set size (VmHWM) of a process of ours (`5` to /proc/<pid>/clear_refs). */
export function resetPeakRss(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    // not Linux, or the process is gone: peakRssKiB then reports the peak since the process started
  }
}

/** Peak resident set size (VmHWM, KiB) of a process since it started or since resetPeakRss; NaN when unknown. */
export function peakRssKiB(pid: number): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** The last lines of a log file (for error messages). */
export function logTail(file: string | undefined, lines = 30): string {
  if (!file || !existsSync(file)) return '(no log)';
  return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
}

/** Thrown from a `waitFor` check: stop waiting at once. */
export class FatalWaitError extends Error {}

/** Waits until every running node of the cluster holds `repoId` live at the same, highest version. */
export async function waitConverged(cluster: Cluster, repoId: string, timeoutMs = 30_000, indexes?: number[]): Promise<RepoStateAnswer> {
  const which = indexes ?? cluster.nodes.map((_, i) => i);
  let last: RepoStateAnswer | undefined;
  await waitFor(
    `${repoId} converged on ${which.map((i) => cluster.nodes[i]!.serverId).join(', ')}`,
    async () => {
      for (const i of which) {
        const n = cluster.nodes[i]!;
        if (!n.running) throw new FatalWaitError(`${n.serverId} exited (${n.exitInfo?.signal ?? n.exitInfo?.code}); log tail:\n${n.logTail(30)}`);
      }
      const states = await Promise.all(which.map((i) => cluster.repoState(i, repoId)));
      last = states[0];
      return states.every((s) => s.live && s.epoch === states[0]!.epoch && s.generation === states[0]!.generation);
    },
    timeoutMs,
    50,
  );
  return last!;
}

/** Creates a repo through the management API; returns the response body. */
export async function createRepo(url: string, repoId: string): Promise<unknown> {
  const { status, body } = await postJson(`${url}/repos`, { repo_id: repoId });
  if (status !== 201) throw new Error(`POST ${url}/repos ${repoId}: ${status} ${JSON.stringify(body)}`);
  return body;
}

// ---------------------------------------------------------------------------------------------
// Timing and statistics

export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = nowMs();
  const value = await fn();
  return { ms: nowMs() - started, value };
}

/** Nearest-rank percentile (p in 0..100) of unsorted numbers. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function round(value: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export function envInt(name: string, fallback: number, min = 1): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min) throw new Error(`${name} must be an integer >= ${min}, got '${raw}'`);
  return Number(raw);
}

/** Formats rows as a fixed-width text table. */
export function table(header: string[], rows: Array<Array<string | number>>): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(cells[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

// ---------------------------------------------------------------------------------------------
// The reference server: git's own http-backend behind nginx and fcgiwrap

export const HTTP_BACKEND = '/usr/lib/git-core/git-http-backend';
export function findBinary(name: string): string {
  for (const dir of ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin', ...(process.env.PATH ?? '').split(':')]) {
    const candidate = path.join(dir, name);
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new Error(`${name} not found: run \`npm run bench:setup\` (bash scripts/bench-setup.sh) first`);
}

/**
 * nginx (one worker, as root, default fastcgi buffering) → fcgiwrap → git-http-backend serving every
 * repo under `projectRoot` (GIT_HTTP_EXPORT_ALL), on a free loopback port. `serverEnv` is passed to
 * git (e.g. HOME, GIT_CONFIG_NOSYSTEM).
 */
export async function startHttpBackend(work: string, projectRoot: string, serverEnv: Record<string, string>): Promise<{ url: string; stop: () => Promise<void> }> {
  const nginx = findBinary('nginx');
  const fcgiwrap = findBinary('fcgiwrap');
  if (!existsSync(HTTP_BACKEND)) throw new Error(`${HTTP_BACKEND} is missing`);
  const dir = path.join(work, 'nginx');
  await fs.mkdir(path.join(dir, 'logs'), { recursive: true });
  const socket = path.join(work, 'fcgi.sock');
  const fcgi = spawnTracked(fcgiwrap, ['-c', '4', '-s', `unix:${socket}`], {
    group: true,
    env: { PATH: process.env.PATH, ...serverEnv },
    logFile: path.join(work, 'fcgiwrap.log'),
  });
  await waitFor('fcgiwrap socket', async () => existsSync(socket), 10_000, 50);

  const port = await freePort();
  const params: Record<string, string> = {
    SCRIPT_FILENAME: HTTP_BACKEND,
    GIT_PROJECT_ROOT: projectRoot,
    GIT_HTTP_EXPORT_ALL: '1',
    PATH_INFO: '$uri',
    QUERY_STRING: '$query_string',
    REQUEST_METHOD: '$request_method',
    CONTENT_TYPE: '$content_type',
    CONTENT_LENGTH: '$content_length',
    HTTP_GIT_PROTOCOL: '$http_git_protocol',
    HTTP_CONTENT_ENCODING: '$http_content_encoding',
    REMOTE_ADDR: '$remote_addr',
    SERVER_PROTOCOL: '$server_protocol',
    GATEWAY_INTERFACE: 'CGI/1.1',
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    ...serverEnv,
  };
  const conf = `# written by scripts/bench-support.ts
user root;
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  fastcgi_temp_path ${dir}/fastcgi;
  proxy_temp_path ${dir}/proxy;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  client_max_body_size 0;
  server {
    listen ${HOST}:${port};
    location / {
      fastcgi_pass unix:${socket};
${Object.entries(params)
  .map(([k, v]) => `      fastcgi_param ${k} "${v}";`)
  .join('\n')}
    }
  }
}
`;
  const confFile = path.join(dir, 'nginx.conf');
  await fs.writeFile(confFile, conf);
  const ngx = spawnTracked(nginx, ['-p', dir, '-c', confFile, '-e', path.join(dir, 'logs', 'error.log')], {
    group: true,
    logFile: path.join(work, 'nginx.log'),
  });
  const url = `http://${HOST}:${port}`;
  await waitFor(
    'nginx',
    async () => {
      if (ngx.child.exitCode !== null) throw new Error(`nginx exited; see ${dir}/logs/error.log`);
      const res = await fetch(`${url}/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return true;
    },
    10_000,
  );
  return {
    url,
    stop: async () => {
      await stopProcess(ngx.child, 3000);
      await stopProcess(fcgi.child, 3000);
    },
  };
}

/** `git ls-remote`/`show-ref` lines as "oid ref", sorted, without HEAD and peeled tags: comparable across servers. */
export async function refLines(args: string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<string[]> {
  const out = (await git(args, env, { cwd })).stdout;
  return out
    .split('\n')
    .filter((l) => l && !l.endsWith('^{}') && !l.endsWith('\tHEAD'))
    .map((l) => l.replace(/\s+/, ' '))
    .sort();
}

export interface BenchFixture {
  dir: string;
  fixture: FixtureInfo;
}

/** The fixture named by FIXTURE (default .bench/fixture.git), built if missing, announced on stderr. */
export async function benchFixture(dirName = process.env.FIXTURE ?? DEFAULT_FIXTURE, params?: FixtureParams): Promise<BenchFixture> {
  const dir = path.resolve(PROJECT_ROOT, dirName);
  const fixture = await ensureFixture(dir, params);
  log(`fixture: ${fixture.commits} commits, ${fixture.refs} refs, ${formatKiB(fixture.sizePackKiB)} packed`);
  return { dir, fixture };
}

/**
 * Git environments for a benchmark working in `work`: a client with an isolated HOME and a fixed
 * identity, and the servers (quorum-git nodes and http-backend alike) with the same empty configuration.
 */
export async function benchGitEnvs(work: string): Promise<{ clientEnv: NodeJS.ProcessEnv; serverEnv: Record<string, string> }> {
  const clientEnv = gitClientEnv(path.join(work, 'client-home'), {
    GIT_AUTHOR_NAME: 'Bench',
    GIT_AUTHOR_EMAIL: 'bench@example.invalid',
    GIT_COMMITTER_NAME: 'Bench',
    GIT_COMMITTER_EMAIL: 'bench@example.invalid',
  });
  const serverHome = path.join(work, 'server-home');
  await fs.mkdir(serverHome, { recursive: true });
  return { clientEnv, serverEnv: { HOME: serverHome, GIT_CONFIG_NOSYSTEM: '1' } };
}

export function log(line: string): void {
  process.stderr.write(`${line}\n`);
}
