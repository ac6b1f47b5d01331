import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, promises as fs, openSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS } from '../base/runtime.js';

// One harness for every local cluster: `quorum-git cluster` (and so `npm start`), the integration
// specs (spec/support/cluster.ts), the benchmarks (scripts/bench-support.ts) and the chaos run. It
// starts N `quorum-git serve` processes on loopback ports, each with its own data dir, environment and
// log; waits until they answer /health (and reach their peers), always with a timeout; stops, kills
// (the node alone, or its whole process group), pauses, resumes or restarts one; and stops them all.
//
// A node that outlived its launcher would hold its port and data dir and confuse the next run, so
// every node still running when this process exits is SIGKILLed, with every process group a node
// ever led (the orphaned gits of a node killed alone stay in its old group).

/** The `quorum-git` executable next to this file (dist/lib/cli/cli.js once built). */
export const CLI_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), 'cli.js');
export const LOOPBACK = '127.0.0.1';

const DEFAULT_START_TIMEOUT_MS = 30_000;
const DEFAULT_STOP_TIMEOUT_MS = 10_000;
/** How often `destroy` looks again for a node's processes after SIGKILLing them. */
const DESTROY_POLL_MS = 20;
/** A slow answer is still an answer: on a loaded machine /health can take seconds. */
const HEALTH_REQUEST_TIMEOUT_MS = 5000;
const HEALTH_POLL_MS = 25;
const HEALTH_MAX_CHARS = 1024 * 1024;
/** Lines of a node's output kept in memory when it goes to the console (for `logTail`). */
const CONSOLE_TAIL_LINES = 200;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Where a node's stdout and stderr go. `file`: appended to its log file (across restarts), written by
 * the node itself, so nothing is lost when the launcher stalls or dies. `console`: to this process's
 * stdout and stderr, each line prefixed with the node's name (what `quorum-git cluster` shows).
 */
export type LogMode = 'file' | 'console';

/** A process working for a node, as /proc shows it (`state` is the stat letter: R, S, D, T, Z...). */
export interface NodeProcess {
  pid: number;
  ppid: number;
  state: string;
  command: string;
}

/** How every node of a cluster is launched. */
export interface LaunchOptions {
  /** The environment every node inherits, under its own (default: this process's). */
  baseEnv: NodeJS.ProcessEnv;
  /** Node.js flags before the CLI's path (default NODE_FLAGS). */
  nodeArgs: readonly string[];
  cwd?: string;
  log: LogMode;
  /** Each node leads its own process group, so a signal can reach its gits too (a machine crash). */
  group: boolean;
  startTimeoutMs: number;
  stopTimeoutMs: number;
}

export interface LocalNodeInit {
  index: number;
  serverId: string;
  host: string;
  port: number;
  dataDir: string;
  logFile: string;
  /** The node's own environment: identity, peers, secret and the cluster's settings. */
  env: Record<string, string>;
  launch: LaunchOptions;
}

// ---------------------------------------------------------------------------------------------
// Last resort: nothing this process started outlives it.

const liveChildren = new Map<ChildProcess, { group: boolean }>();
const groupsEverLed = new Set<number>();
let exitHookInstalled = false;

function killLeftovers(): void {
  for (const [child, { group }] of liveChildren) {
    try {
      if (group && child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      else child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const pgid of groupsEverLed) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

function track(child: ChildProcess, group: boolean): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', killLeftovers);
  }
  liveChildren.set(child, { group });
  if (group && child.pid !== undefined) groupsEverLed.add(child.pid);
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function sleepMs(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Distinct free ports on `host`: every listener stays open until all are allocated. */
export async function freePorts(count: number, host = LOOPBACK): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i += 1) {
      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, host, () => resolve());
      });
      const address = server.address();
      if (typeof address !== 'object' || !address) throw new Error('no free port');
      ports.push(address.port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

/** The ports of `ports` on which something already listens (another cluster, an old node). */
export async function portsInUse(ports: readonly number[], host = LOOPBACK): Promise<number[]> {
  const busy: number[] = [];
  for (const port of ports) {
    const server = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, host, () => resolve(true));
    });
    if (free) await new Promise<void>((resolve) => server.close(() => resolve()));
    else busy.push(port);
  }
  return busy;
}

/**
 * A node's /health body, or undefined when it does not answer 200 within `timeoutMs`. node:http, not
 * fetch: a process that used fetch is slower to exit (undici's WebAssembly), and `quorum-git cluster`
 * should end as soon as its nodes have.
 */
function healthOf(url: string, timeoutMs: number): Promise<{ server_id?: string; peers_reachable?: number } | undefined> {
  return new Promise((resolve) => {
    const req = http.get(`${url}/health`, { agent: false, timeout: timeoutMs }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
        if (text.length > HEALTH_MAX_CHARS) req.destroy();
      });
      res.on('error', () => resolve(undefined));
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 ? (JSON.parse(text) as { server_id?: string; peers_reachable?: number }) : undefined);
        } catch {
          resolve(undefined);
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/** Splits a stream into lines and hands each to `onLine`; the last partial line at its end too. */
function eachLine(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    for (const line of lines) onLine(line);
  });
  stream.on('end', () => {
    if (buffered !== '') onLine(buffered);
    buffered = '';
  });
  // A pipe from a child that dies can error; the exit is reported through the child, not here.
  stream.on('error', () => undefined);
}

// ---------------------------------------------------------------------------------------------
// One node

export class LocalNode {
  readonly index: number;
  readonly serverId: string;
  readonly host: string;
  readonly port: number;
  readonly url: string;
  readonly dataDir: string;
  /** Its stdout and stderr, appended across restarts (`file` log mode only). */
  readonly logFile: string;
  /** Its own environment, on top of the launch's base; may be changed before a (re)start. */
  readonly env: Record<string, string>;
  /** Every process group this node led (group mode): orphans of a node killed alone stay in theirs. */
  readonly groups = new Set<number>();
  protected readonly launch: LaunchOptions;
  private child: ChildProcess | undefined;
  private exited: Promise<ExitInfo> | undefined;
  private lastExit: ExitInfo | undefined;
  private isPaused = false;
  private readonly consoleTail: string[] = [];

  constructor(init: LocalNodeInit) {
    this.index = init.index;
    this.serverId = init.serverId;
    this.host = init.host;
    this.port = init.port;
    this.url = `http://${init.host}:${init.port}`;
    this.dataDir = init.dataDir;
    this.logFile = init.logFile;
    this.env = init.env;
    this.launch = init.launch;
  }

  /** The process is running (it may not answer yet). */
  get running(): boolean {
    return this.child !== undefined;
  }

  get pid(): number {
    if (this.child?.pid === undefined) throw new Error(`${this.serverId} is not running`);
    return this.child.pid;
  }

  /** Leads its own process group (the cluster was made with `group: true`). */
  get leadsGroup(): boolean {
    return this.launch.group;
  }

  /** SIGSTOPped by `pause` and not resumed yet. */
  get paused(): boolean {
    return this.isPaused;
  }

  /** How the last process of this node ended, if one did. */
  get exitInfo(): ExitInfo | undefined {
    return this.lastExit;
  }

  /** Spawns `quorum-git serve` without waiting for it to listen; `extraEnv` is for this run only. */
  spawn(extraEnv: Record<string, string> = {}): ChildProcess {
    if (this.child) throw new Error(`${this.serverId} is already running`);
    const { baseEnv, nodeArgs, cwd, log, group } = this.launch;
    const env = { ...baseEnv, ...this.env, ...extraEnv };
    let child: ChildProcess;
    if (log === 'file') {
      const out = openSync(this.logFile, 'a');
      try {
        child = spawn(process.execPath, [...nodeArgs, CLI_PATH, 'serve'], { cwd, env, detached: group, stdio: ['ignore', out, out] });
      } finally {
        closeSync(out);
      }
    } else {
      child = spawn(process.execPath, [...nodeArgs, CLI_PATH, 'serve'], { cwd, env, detached: group, stdio: ['ignore', 'pipe', 'pipe'] });
      const prefix = `${this.serverId} | `;
      const keep = (line: string): void => {
        this.consoleTail.push(line);
        if (this.consoleTail.length > CONSOLE_TAIL_LINES) this.consoleTail.shift();
      };
      eachLine(child.stdout!, (line) => {
        keep(line);
        process.stdout.write(`${prefix}${line}\n`);
      });
      eachLine(child.stderr!, (line) => {
        keep(line);
        process.stderr.write(`${prefix}${line}\n`);
      });
    }
    track(child, group);
    if (group && child.pid !== undefined) this.groups.add(child.pid);
    this.child = child;
    this.isPaused = false;
    this.exited = new Promise((resolve) => {
      const done = (info: ExitInfo): void => {
        liveChildren.delete(child);
        if (this.child === child) this.child = undefined;
        this.lastExit = info;
        resolve(info);
      };
      child.once('exit', (code, signal) => done({ code, signal }));
      // Spawning itself failed (no 'exit' follows): reported as an exit with neither code nor signal.
      child.once('error', () => {
        if (child.exitCode === null && child.signalCode === null) done({ code: null, signal: null });
      });
    });
    return child;
  }

  /**
   * Starts the node and waits until it answers /health (and, with `peers`, reaches that many peers).
   * Throws with the tail of its log when it exits first or does not answer in time.
   */
  async start(extraEnv: Record<string, string> = {}, options: { peers?: number; timeoutMs?: number } = {}): Promise<void> {
    this.spawn(extraEnv);
    await this.waitHealthy(options);
  }

  /** Waits until the running node answers /health (and reaches `peers` peers, when given). */
  async waitHealthy(options: { peers?: number; timeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = options.timeoutMs ?? this.launch.startTimeoutMs;
    const child = this.child;
    if (!child) throw new Error(`${this.serverId} is not running${this.lastExit ? ` (exited ${describeExit(this.lastExit)})` : ''}:\n${this.logTail()}`);
    const deadline = Date.now() + timeoutMs;
    let seen = 'no answer';
    for (;;) {
      if (this.child !== child) throw new Error(`${this.serverId} exited during start (${describeExit(this.lastExit)}):\n${this.logTail()}`);
      const health = await healthOf(this.url, Math.max(100, Math.min(HEALTH_REQUEST_TIMEOUT_MS, deadline - Date.now())));
      // Another process on the port (a node left from an earlier run) must not pass for this one.
      if (health && health.server_id !== this.serverId) {
        seen = `port ${this.port} answered as '${health.server_id ?? '?'}'`;
      } else if (health) {
        if (options.peers === undefined || health.peers_reachable === options.peers) return;
        seen = `reaches ${health.peers_reachable ?? '?'} of ${options.peers} peers`;
      }
      if (Date.now() >= deadline) {
        throw new Error(`${this.serverId} not ready after ${timeoutMs} ms (${seen}):\n${this.logTail()}`);
      }
      await sleepMs(HEALTH_POLL_MS);
    }
  }

  /**
   * SIGTERM, then waits for the exit (SIGKILL after the stop timeout). A group leader's group is
   * SIGKILLed once it is gone, so no git it started outlives it. Undefined when it was not running.
   */
  async stop(): Promise<ExitInfo | undefined> {
    const child = this.child;
    if (!child) return undefined;
    if (this.isPaused) this.resume();
    const info = await this.signalAndWait('SIGTERM', false, this.launch.stopTimeoutMs);
    if (this.launch.group && child.pid !== undefined) signalProcess(-child.pid, 'SIGKILL');
    return info;
  }

  /**
   * SIGKILL: a crash; nothing the node had not fsynced survives. With `group`, its whole process group
   * (the node and the gits it runs: a machine crash); without, the node alone (its gits orphaned).
   */
  async kill(options: { group?: boolean } = {}): Promise<ExitInfo | undefined> {
    const group = options.group ?? false;
    if (group && !this.launch.group) throw new Error(`${this.serverId} does not lead a process group: start the cluster with group: true`);
    if (!this.child) return undefined;
    // A stopped group stays stopped without its leader: let it run into the kill.
    if (this.isPaused) this.resume();
    return this.signalAndWait('SIGKILL', group, this.launch.stopTimeoutMs);
  }

  /**
   * SIGKILL to the node and to every process still working for it (its gits, and any an earlier kill
   * of the node alone orphaned), then waits until all are gone, up to the stop timeout: what a
   * teardown needs before it removes the data dir, into which a git still running would write.
   */
  async destroy(): Promise<void> {
    await this.kill({ group: this.launch.group });
    const deadline = Date.now() + this.launch.stopTimeoutMs;
    for (;;) {
      // A zombie is gone already (an orphan's may wait for a reaper that never comes, as in a container).
      const left = this.processes().filter((p) => p.state !== 'Z');
      if (left.length === 0) return;
      if (Date.now() >= deadline) throw new Error(`${this.serverId}: still running after SIGKILL: ${left.map((p) => `${p.pid} ${p.command}`).join('; ')}`);
      for (const p of left) signalProcess(p.pid, 'SIGKILL');
      await sleepMs(DESTROY_POLL_MS);
    }
  }

  /** SIGSTOP (the whole group in group mode: a frozen machine, its gits included). */
  pause(): void {
    if (!this.child) throw new Error(`${this.serverId} is not running`);
    this.signal('SIGSTOP', this.launch.group);
    this.isPaused = true;
  }

  /** SIGCONT after `pause`. */
  resume(): void {
    this.signal('SIGCONT', this.launch.group);
    this.isPaused = false;
  }

  /** Sends `sig` to the node, or to its process group (group mode only). */
  signal(sig: NodeJS.Signals, group = false): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    if (group && !this.launch.group) throw new Error(`${this.serverId} does not lead a process group`);
    signalProcess(group ? -pid : pid, sig);
  }

  async restart(extraEnv: Record<string, string> = {}): Promise<void> {
    await this.stop();
    await this.start(extraEnv);
  }

  /** Resolves when the current (or last) process exits; for nodes expected to stop on their own. */
  waitForExit(): Promise<ExitInfo> {
    if (!this.exited) throw new Error(`${this.serverId} was never started`);
    return this.exited;
  }

  private async signalAndWait(sig: NodeJS.Signals, group: boolean, killAfterMs: number): Promise<ExitInfo | undefined> {
    const child = this.child;
    if (!child) return undefined;
    const exited = this.exited!;
    this.signal(sig, group);
    const timer = setTimeout(() => this.signal('SIGKILL', group), killAfterMs);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Processes working for this node: its children, members of a process group it led, and any process
   * whose working directory is inside its DATA_DIR (git serving a repo, including grandchildren such
   * as pack-objects that outlive their parent). Reads /proc, so Linux only.
   */
  processes(): NodeProcess[] {
    const self = this.child?.pid;
    const out: NodeProcess[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      if (pid === self) continue;
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        const state = fields[0] ?? '';
        const ppid = Number(fields[1]);
        const pgid = Number(fields[2]);
        let cwd = '';
        try {
          cwd = readlinkSync(`/proc/${pid}/cwd`);
        } catch {
          // exited meanwhile, or not ours to read
        }
        if ((self !== undefined && ppid === self) || this.groups.has(pgid) || cwd === this.dataDir || cwd.startsWith(`${this.dataDir}/`)) {
          const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
          out.push({ pid, ppid, state, command });
        }
      } catch {
        // the process exited while we looked
      }
    }
    return out;
  }

  /** Everything this node has logged so far, across restarts (`file` mode; the kept tail in `console` mode). */
  logText(): string {
    if (this.launch.log === 'console') return this.consoleTail.join('\n');
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** The last lines of this node's log. */
  logTail(lines = 40): string {
    const text = this.logText();
    if (text === '') return '(no log)';
    return text.split('\n').slice(-lines - 1).join('\n');
  }
}

function signalProcess(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

function describeExit(info: ExitInfo | undefined): string {
  if (!info) return 'unknown';
  return info.signal ?? (info.code === null ? 'could not be spawned' : `code ${info.code}`);
}

// ---------------------------------------------------------------------------------------------
// A cluster

export interface LocalClusterOptions<N extends LocalNode = LocalNode> {
  size: number;
  /** node-<i>/ (each node's DATA_DIR) and node-<i>.log are made here; created if missing. */
  root: string;
  /** Where the nodes listen (default 127.0.0.1). */
  host?: string;
  /** One port per node (default: free ports). */
  ports?: readonly number[];
  /** CLUSTER_SECRET of every node (default: random). */
  secret?: string;
  /** Every node's settings, under its identity (PORT, HOST, SERVER_ID, DATA_DIR, PEER_URLS, CLUSTER_SECRET). */
  env?: Record<string, string>;
  /** The environment under every node's own (default: this process's). */
  baseEnv?: NodeJS.ProcessEnv;
  /** Node.js flags of every node (default NODE_FLAGS). */
  nodeArgs?: readonly string[];
  cwd?: string;
  log?: LogMode;
  group?: boolean;
  /** How long a start waits for /health (and the peers), default 30 s. */
  startTimeoutMs?: number;
  /** How long a stop waits after SIGTERM before SIGKILL, default 10 s. */
  stopTimeoutMs?: number;
  /** Builds each node: specs add their helpers to LocalNode this way. */
  makeNode?: (init: LocalNodeInit) => N;
}

export class LocalCluster<N extends LocalNode = LocalNode> {
  private constructor(
    readonly root: string,
    readonly nodes: N[],
    readonly secret: string,
  ) {}

  /**
   * Lays out a cluster of `size` nodes (none started): each node's identity, peers and data dir. The
   * root is resolved to its real path (/proc reports working directories resolved; `processes` compares).
   */
  static async create<N extends LocalNode = LocalNode>(options: LocalClusterOptions<N>): Promise<LocalCluster<N>> {
    const { size } = options;
    if (!Number.isInteger(size) || size < 1) throw new Error(`a cluster needs a whole number of nodes >= 1, got ${size}`);
    const host = options.host ?? LOOPBACK;
    const ports = options.ports ? [...options.ports] : await freePorts(size, host);
    if (ports.length !== size) throw new Error(`${size} nodes need ${size} ports, got ${ports.length}`);
    await fs.mkdir(options.root, { recursive: true });
    const root = await fs.realpath(options.root);
    const secret = options.secret ?? randomBytes(16).toString('hex');
    const launch: LaunchOptions = {
      baseEnv: options.baseEnv ?? process.env,
      nodeArgs: options.nodeArgs ?? NODE_FLAGS,
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      log: options.log ?? 'file',
      group: options.group ?? false,
      startTimeoutMs: options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS,
      stopTimeoutMs: options.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS,
    };
    const urls = ports.map((port) => `http://${host}:${port}`);
    const makeNode = options.makeNode ?? ((init: LocalNodeInit) => new LocalNode(init) as N);
    const nodes = ports.map((port, i) => {
      const serverId = `node-${i + 1}`;
      const dataDir = path.join(root, serverId);
      return makeNode({
        index: i,
        serverId,
        host,
        port,
        dataDir,
        logFile: path.join(root, `${serverId}.log`),
        env: {
          ...(options.env ?? {}),
          PORT: String(port),
          HOST: host,
          SERVER_ID: serverId,
          DATA_DIR: dataDir,
          PEER_URLS: urls.filter((_, j) => j !== i).join(','),
          CLUSTER_SECRET: secret,
        },
        launch,
      });
    });
    return new LocalCluster(root, nodes, secret);
  }

  /** The nodes' own URLs, in order. */
  get urls(): string[] {
    return this.nodes.map((n) => n.url);
  }

  /** Node `n`, counted from 1 like its server id (node-1 is node(1)). */
  node(n: number): N {
    const node = this.nodes[n - 1];
    if (!node) throw new Error(`no node ${n} in a cluster of ${this.nodes.length}`);
    return node;
  }

  /**
   * Starts every stopped node and waits until each answers /health and, unless `peers` is false,
   * reaches every other node: the state a cluster is ready in. Throws (nodes left as they are) when
   * one exits or is not ready in time.
   */
  async start(options: { peers?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const stopped = this.nodes.filter((n) => !n.running);
    for (const node of stopped) node.spawn();
    await this.waitReady(options);
  }

  /** Waits until every node answers /health (and, unless `peers` is false, reaches all the others). */
  async waitReady(options: { peers?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const peers = options.peers === false ? undefined : this.nodes.length - 1;
    const waits = this.nodes.map((n) => n.waitHealthy({ ...(peers === undefined ? {} : { peers }), ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) }));
    await Promise.all(waits);
  }

  /** SIGTERM to every node, waiting for each (SIGKILL after the stop timeout). */
  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
  }

  /** SIGKILL to every node and every process working for it, waiting until all are gone (see LocalNode.destroy). */
  async kill(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.destroy()));
  }
}
