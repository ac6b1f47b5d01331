import { randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fs, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CLI_PATH, LocalCluster, type LocalNode } from '../lib/cli/local-cluster.js';
import { UPDATE_REF_SESSION_COMMAND } from '../lib/git/git-refs.js';
import { BULK_REF_UPDATES } from '../lib/git/ref-txn.js';
import { SPEC_NODE_ENV } from '../spec/support/cluster.js';
import { HOST, PROJECT_ROOT, freePorts, git, gitClientEnv, onCleanup, run, runMain, sleep } from './bench-support.js';
import {
  allowedRepoStates,
  classifyApiAnswer,
  isRefusal,
  parsePushPorcelain,
  requiredAncestors,
  type OpKind,
  type OpRecord,
  type Outcome,
  type RefResult,
} from './chaos-history.js';
import { Relay } from './chaos-relay.js';
import { seededRandom } from '../lib/core/seeded-random.js';

// `npm run chaos`: a bounded, loopback-only crash test of a real cluster, in the manner of Jepsen.
// N real nodes, each the leader of its own process group; concurrent clients push (own branches, a
// shared contended branch, atomic multi-ref pushes, some of BULK_REF_UPDATES refs and more, packs over
// the inline limit) and create/delete repos
// through random nodes, while a nemesis SIGKILLs a node's group (node and its gits: a machine crash),
// SIGKILLs the node alone (its gits orphaned), SIGSTOPs it for 1-5 s, cuts it off from its peers, and
// kills one node for good near the end. Every operation is recorded with what the client heard. After
// healing (and the operator's `quorum-git node declare-dead` of the node killed for good, so no
// transaction waits on its answer), the checker reads every replica from disk and reports each
// violation; exit 1 if any.
//
//   node dist/scripts/chaos.js [--duration-s 60] [--nodes 3|5] [--seed N] [--clients 4] [--no-faults]
//                              [--no-kill-for-good] [--converge-timeout-s 60] [--keep]
//
// The temp dir (node logs, data dirs, the operation history as JSON) is kept on failure or with --keep.

const INLINE_PACK_LIMIT_BYTES = 512 * 1024;
const PUSH_TIMEOUT_MS = 20_000;
const API_TIMEOUT_MS = 15_000;
const LEFTOVER_PROCESS_WAIT_MS = 15_000;
const WRITE_PROBE_TIMEOUT_MS = 30_000;

// ---------------------------------------------------------------------------------------------
// Options and randomness

const { values: args } = parseArgs({
  options: {
    'duration-s': { type: 'string', default: '60' },
    nodes: { type: 'string', default: '3' },
    seed: { type: 'string' },
    clients: { type: 'string', default: '4' },
    'no-faults': { type: 'boolean', default: false },
    'no-kill-for-good': { type: 'boolean', default: false },
    'converge-timeout-s': { type: 'string', default: '60' },
    keep: { type: 'boolean', default: false },
  },
});

function intArg(name: string, raw: string | undefined, min: number, max: number): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`chaos: --${name} must be an integer in ${min}..${max}, got '${raw}'\n`);
    process.exit(2);
  }
  return n;
}

const DURATION_MS = intArg('duration-s', args['duration-s'], 1, 3600) * 1000;
const NODE_COUNT = intArg('nodes', args.nodes, 3, 5);
if (NODE_COUNT !== 3 && NODE_COUNT !== 5) {
  process.stderr.write('chaos: --nodes must be 3 or 5\n');
  process.exit(2);
}
const CLIENT_COUNT = intArg('clients', args.clients, 1, 16);
const SEED = args.seed === undefined ? randomBytes(4).readUInt32BE(0) : intArg('seed', args.seed, 0, 2 ** 32 - 1);
const FAULTS = !args['no-faults'];
const KILL_FOR_GOOD = FAULTS && !args['no-kill-for-good'];
const CONVERGE_TIMEOUT_MS = intArg('converge-timeout-s', args['converge-timeout-s'], 1, 3600) * 1000;

const random = seededRandom(SEED);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
const between = (lo: number, hi: number): number => lo + Math.floor(random() * (hi - lo + 1));

// ---------------------------------------------------------------------------------------------
// The cluster: nodes as process-group leaders behind relays

interface ChaosNode {
  index: number;
  name: string;
  /** The node's own port: clients use it. */
  url: string;
  relay: Relay;
  dataDir: string;
  logFile: string;
  /**
   * Its process (lib/cli/local-cluster.ts), the leader of its own group; `node.groups` holds every group it
   * ever led (orphaned gits of a node killed alone stay in the old one).
   */
  node: LocalNode;
  deadForGood: boolean;
}

const root = mkdtempSync(path.join(os.tmpdir(), 'qg-chaos-'));
const nodes: ChaosNode[] = [];
const secret = randomBytes(16).toString('hex');
const t0 = Date.now();
const elapsed = (): string => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
const say = (line: string): void => void process.stdout.write(`[${elapsed()}] ${line}\n`);

function isRunning(n: ChaosNode): boolean {
  return n.node.running;
}

/** Waits until the node answers /health (and, with `peers`, reaches that many peers). */
async function waitHealthy(n: ChaosNode, timeoutMs: number, peers?: number): Promise<boolean> {
  try {
    await n.node.waitHealthy({ timeoutMs, ...(peers === undefined ? {} : { peers }) });
    return true;
  } catch {
    return false;
  }
}

async function startCluster(): Promise<void> {
  const ports = await freePorts(NODE_COUNT * 2);
  const baseEnv = { ...process.env };
  delete baseEnv.FAILPOINTS;
  // Each node leads its own process group, so the nemesis can kill the node together with its gits.
  const cluster = await LocalCluster.create({
    size: NODE_COUNT,
    root,
    host: HOST,
    ports: ports.slice(0, NODE_COUNT),
    secret,
    env: { ...SPEC_NODE_ENV, LOG_LEVEL: process.env.CHAOS_LOG_LEVEL ?? 'info' },
    baseEnv,
    cwd: PROJECT_ROOT,
    group: true,
    startTimeoutMs: 30_000,
    stopTimeoutMs: 3000,
  });
  // A graceful stop, then whatever still works in a data dir (the gits of a node killed alone) goes too,
  // before the exit removes the root.
  onCleanup(async () => {
    await cluster.stop();
    await cluster.kill();
  });
  for (const node of cluster.nodes) {
    const relay = new Relay(node.port);
    await relay.listen(ports[NODE_COUNT + node.index]!);
    nodes.push({ index: node.index, name: node.serverId, url: node.url, relay, dataDir: node.dataDir, logFile: node.logFile, node, deadForGood: false });
  }
  // Peers reach each node through its relay (the node's identity), clients directly.
  for (const n of nodes) {
    n.node.env.PUBLIC_URL = `http://${HOST}:${n.relay.port}`;
    n.node.env.PEER_URLS = nodes
      .filter((m) => m !== n)
      .map((m) => `http://${HOST}:${m.relay.port}`)
      .join(',');
  }
  try {
    await cluster.start();
  } catch (err) {
    throw new Error(`the cluster did not come up; logs in ${root}: ${(err as Error).message.split('\n')[0]}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------
// Clients

const history: OpRecord[] = [];
let seq = 0;
let stopClients = false;
const PUSH_REPOS = ['chaos/alpha', 'chaos/beta'];
/** Repos each client creates and deletes; one writer each, so the order of its answers is exact. */
const churnRepos = (client: number): string[] => [`chaos/c${client}-x`, `chaos/c${client}-y`];
const SHARED_REF = 'refs/heads/main';

const liveNodes = (): ChaosNode[] => nodes.filter((n) => !n.deadForGood);

interface Client {
  id: number;
  dir: string;
  env: NodeJS.ProcessEnv;
  /** Local tip of each own ref: every push builds on the last attempt, acknowledged or not. */
  tips: Map<string, string>;
  counter: number;
}

async function gitOut(c: Client, argv: string[], input?: string): Promise<string> {
  const res = await run('git', ['--git-dir', c.dir, ...argv], { env: c.env, timeoutMs: 60_000, input });
  return res.stdout.trim();
}

/** A commit with one small file (and, with `bigBytes`, one incompressible file of that size) on `parents`. */
async function makeCommit(c: Client, parents: string[], bigBytes = 0): Promise<string> {
  c.counter += 1;
  const small = await gitOut(c, ['hash-object', '-w', '--stdin'], `client ${c.id} commit ${c.counter} ${randomBytes(8).toString('hex')}\n`);
  let tree = `100644 blob ${small}\tnote.txt\n`;
  if (bigBytes > 0) {
    // base64 of random bytes: zlib cannot shrink it below ~3/4, so the pack stays over the limit.
    const big = await gitOut(c, ['hash-object', '-w', '--stdin'], randomBytes(Math.ceil((bigBytes * 3) / 4)).toString('base64'));
    tree += `100644 blob ${big}\tbig.bin\n`;
  }
  const treeOid = await gitOut(c, ['mktree'], tree);
  return gitOut(c, ['commit-tree', treeOid, ...parents.flatMap((p) => ['-p', p]), '-m', `client ${c.id} #${c.counter}`]);
}

async function push(c: Client, kind: OpKind, node: ChaosNode, repoId: string, updates: { ref: string; oid: string }[], atomic: boolean): Promise<OpRecord> {
  const startMs = Date.now() - t0;
  const argv = ['--git-dir', c.dir, 'push', '--porcelain', ...(atomic ? ['--atomic'] : []), `${node.url}/${repoId}.git`, ...updates.map((u) => `${u.oid}:${u.ref}`)];
  let refs: RefResult[];
  let detail: string;
  try {
    const res = await run('git', argv, { env: c.env, timeoutMs: PUSH_TIMEOUT_MS, allowFail: true });
    refs = parsePushPorcelain(res.stdout, updates);
    detail = `exit ${res.code}: ${(res.stdout + res.stderr).trim().split('\n').slice(-3).join(' | ')}`;
  } catch (err) {
    refs = updates.map((u) => ({ ...u, outcome: 'indeterminate' as Outcome, detail: (err as Error).message }));
    detail = (err as Error).message;
  }
  const outcome: Outcome = refs.every((r) => r.outcome === 'ok') ? 'ok' : refs.some(isRefusal) ? 'failed' : 'indeterminate';
  const op: OpRecord = { seq: ++seq, client: c.id, kind, node: node.name, repoId, refs, outcome, detail, startMs, endMs: Date.now() - t0 };
  history.push(op);
  return op;
}

async function api(c: Client, kind: 'create' | 'delete', node: ChaosNode, repoId: string): Promise<OpRecord> {
  const startMs = Date.now() - t0;
  let status: number | undefined;
  let code: string | undefined;
  let detail: string;
  try {
    const res =
      kind === 'create'
        ? await fetch(`${node.url}/repos`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ repo_id: repoId }),
            signal: AbortSignal.timeout(API_TIMEOUT_MS),
          })
        : await fetch(`${node.url}/repos/${repoId}`, { method: 'DELETE', signal: AbortSignal.timeout(API_TIMEOUT_MS) });
    const text = await res.text();
    status = res.status;
    try {
      code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
    } catch {
      code = undefined;
    }
    detail = `${status} ${text.slice(0, 200)}`;
  } catch (err) {
    detail = (err as Error).message;
  }
  const op: OpRecord = {
    seq: ++seq,
    client: c.id,
    kind,
    node: node.name,
    repoId,
    refs: [],
    outcome: classifyApiAnswer(status, code),
    detail,
    startMs,
    endMs: Date.now() - t0,
  };
  history.push(op);
  return op;
}

async function makeClient(id: number, base: string): Promise<Client> {
  const dir = path.join(root, 'clients', `c${id}.git`);
  const env = gitClientEnv(path.join(root, 'clients', `home-${id}`), {
    GIT_AUTHOR_NAME: `client ${id}`,
    GIT_AUTHOR_EMAIL: `c${id}@chaos.invalid`,
    GIT_COMMITTER_NAME: `client ${id}`,
    GIT_COMMITTER_EMAIL: `c${id}@chaos.invalid`,
    GIT_AUTHOR_DATE: '1700000000 +0000',
    GIT_COMMITTER_DATE: '1700000000 +0000',
  });
  await git(['init', '-q', '--bare', dir], env);
  const c: Client = { id, dir, env, tips: new Map(), counter: 0 };
  // Every client starts from the repos' initial commit (fetched before any fault).
  await gitOut(c, ['fetch', '-q', `${nodes[0]!.url}/${PUSH_REPOS[0]}.git`, `+${SHARED_REF}:refs/base`]);
  for (const repoId of PUSH_REPOS) for (const ref of ownRefs(id)) c.tips.set(`${repoId} ${ref}`, base);
  return c;
}

const ownRefs = (id: number): string[] => [`refs/heads/c${id}`, `refs/heads/c${id}-a`, `refs/heads/c${id}-b`];

async function clientStep(c: Client): Promise<void> {
  const repoId = pick(PUSH_REPOS);
  const node = pick(liveNodes());
  const roll = random();
  if (roll < 0.35) {
    const ref = `refs/heads/c${c.id}`;
    const key = `${repoId} ${ref}`;
    const big = random() < 0.12 ? INLINE_PACK_LIMIT_BYTES + 128 * 1024 : 0;
    const oid = await makeCommit(c, [c.tips.get(key)!], big);
    c.tips.set(key, oid);
    await push(c, 'push-own', node, repoId, [{ ref, oid }], false);
  } else if (roll < 0.55) {
    const updates: { ref: string; oid: string }[] = [];
    for (const ref of [`refs/heads/c${c.id}-a`, `refs/heads/c${c.id}-b`]) {
      const key = `${repoId} ${ref}`;
      const oid = await makeCommit(c, [c.tips.get(key)!]);
      c.tips.set(key, oid);
      updates.push({ ref, oid });
    }
    if (random() < 0.3) {
      // Enough refs for the peers' bulk prepare (one syncfs for every lock: lib/git/ref-txn.ts), all
      // moved to one new commit on top of the last one tried.
      const key = `${repoId} refs/heads/c${c.id}-bulk`;
      const oid = await makeCommit(c, [c.tips.get(key) ?? c.tips.get(`${repoId} refs/heads/c${c.id}`)!]);
      c.tips.set(key, oid);
      for (let k = 0; k < BULK_REF_UPDATES; k++) updates.push({ ref: `refs/heads/c${c.id}-bulk-${k}`, oid });
    }
    await push(c, 'push-atomic', node, repoId, updates, true);
  } else if (roll < 0.8) {
    // The contended branch: fetch its tip through a random node, build on it, push without force.
    const fetchNode = pick(liveNodes());
    const local = `refs/remotes/shared/${repoId.replace('/', '-')}`;
    try {
      await run('git', ['--git-dir', c.dir, 'fetch', '-q', `${fetchNode.url}/${repoId}.git`, `+${SHARED_REF}:${local}`], { env: c.env, timeoutMs: PUSH_TIMEOUT_MS });
    } catch {
      return; // a failed read changes nothing: try something else
    }
    const tip = await gitOut(c, ['rev-parse', local]);
    const oid = await makeCommit(c, [tip], random() < 0.08 ? INLINE_PACK_LIMIT_BYTES + 128 * 1024 : 0);
    await push(c, 'push-shared', node, repoId, [{ ref: SHARED_REF, oid }], false);
  } else {
    const target = pick(churnRepos(c.id));
    await api(c, random() < 0.55 ? 'create' : 'delete', node, target);
  }
}

async function clientLoop(c: Client): Promise<void> {
  while (!stopClients) {
    try {
      await clientStep(c);
    } catch (err) {
      // The client's own git failed (not the cluster): nothing was sent, nothing recorded.
      say(`client ${c.id}: local step failed: ${(err as Error).message.split('\n')[0]}`);
      await sleep(200);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The nemesis

type FaultKind = 'kill-group' | 'kill-node' | 'pause' | 'partition' | 'kill-for-good';
const faults: Record<FaultKind, number> = { 'kill-group': 0, 'kill-node': 0, pause: 0, partition: 0, 'kill-for-good': 0 };
let stopNemesis = false;

async function killNode(n: ChaosNode, group: boolean): Promise<void> {
  // A paused node is resumed first (lib/cli/local-cluster.ts), so its stopped gits run into the kill too.
  await n.node.kill({ group });
}

async function restartNode(n: ChaosNode): Promise<void> {
  if (n.deadForGood || isRunning(n)) return;
  n.node.spawn();
  if (!(await waitHealthy(n, 30_000))) say(`${n.name} did not answer /health within 30 s of its restart (see ${n.logFile})`);
}

/** Interruptible sleep for the nemesis: returns early when the run ends. */
async function nap(ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!stopNemesis && Date.now() < until) await sleep(Math.min(200, until - Date.now()));
}

async function nemesis(): Promise<void> {
  const killForGoodAtMs = Date.now() + DURATION_MS * 0.8;
  let killedForGood = false;
  await nap(between(1000, 2500));
  while (!stopNemesis) {
    if (KILL_FOR_GOOD && !killedForGood && Date.now() >= killForGoodAtMs) {
      killedForGood = true;
      const victim = pick(liveNodes());
      say(`nemesis: ${victim.name} killed for good (process group)`);
      faults['kill-for-good'] += 1;
      await killNode(victim, true);
      victim.deadForGood = true;
      // With 3 nodes the two left are the majority: one more fault and nothing could commit.
      if (NODE_COUNT === 3) return;
      await nap(between(1000, 3000));
      continue;
    }
    const victim = pick(liveNodes());
    const kind = pick<FaultKind>(['kill-group', 'kill-node', 'pause', 'partition']);
    const holdMs = between(1000, 5000);
    faults[kind] += 1;
    say(`nemesis: ${kind} ${victim.name} for ${(holdMs / 1000).toFixed(1)} s`);
    switch (kind) {
      case 'kill-group':
      case 'kill-node':
        await killNode(victim, kind === 'kill-group');
        await nap(holdMs);
        await restartNode(victim);
        break;
      case 'pause':
        // The whole group: a frozen machine, its gits included.
        if (isRunning(victim)) victim.node.pause();
        await nap(holdMs);
        victim.node.resume();
        break;
      case 'partition':
        victim.relay.cut();
        await nap(holdMs);
        victim.relay.heal();
        break;
      default:
        break;
    }
    await nap(between(1000, 3000));
  }
}

async function healAll(): Promise<void> {
  for (const n of nodes) {
    n.relay.heal();
    if (n.node.paused) n.node.resume();
  }
  await Promise.all(liveNodes().map((n) => restartNode(n)));
}

/**
 * What the operator does once a machine is gone for good: `quorum-git node declare-dead`, with the
 * node's identity (its relay URL, as its peers name it), through a live node.
 */
async function declareDead(violations: string[]): Promise<void> {
  const via = liveNodes()[0]!;
  for (const n of nodes.filter((x) => x.deadForGood)) {
    const target = `http://${HOST}:${n.relay.port}`;
    const res = await run(process.execPath, [CLI_PATH, 'node', 'declare-dead', target, '--node', via.url], { env: { ...process.env, CLUSTER_SECRET: secret }, timeoutMs: 60_000, allowFail: true });
    if (res.code === 0) say(`operator: ${n.name} declared dead for good`);
    else violations.push(`quorum-git node declare-dead ${n.name} exited ${res.code}: ${`${res.stdout}${res.stderr}`.trim().slice(0, 500)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Reading replicas from disk

interface ReplicaRepo {
  head: string;
  /** ref → oid, refs/lost+found/ left out (a repair's keepsakes are per replica by design). */
  refs: Record<string, string>;
}
type ReplicaState = Map<string, ReplicaRepo>;

const checkerEnv = gitClientEnv(path.join(root, 'checker-home'));

function repoDir(n: ChaosNode, repoId: string): string {
  const [owner, name] = repoId.split('/') as [string, string];
  return path.join(n.dataDir, 'repos', owner, `${name}.git`);
}

/** The repos a node serves: DATA_DIR/repos/<owner>/<name>.git holding a HEAD. */
function listRepos(n: ChaosNode): string[] {
  const out: string[] = [];
  const reposRoot = path.join(n.dataDir, 'repos');
  let owners: string[] = [];
  try {
    owners = readdirSync(reposRoot);
  } catch {
    return out;
  }
  for (const owner of owners) {
    let names: string[] = [];
    try {
      names = readdirSync(path.join(reposRoot, owner));
    } catch {
      continue;
    }
    for (const name of names) {
      if (!name.endsWith('.git')) continue;
      try {
        readFileSync(path.join(reposRoot, owner, name, 'HEAD'));
        out.push(`${owner}/${name.slice(0, -4)}`);
      } catch {
        // not a complete repo
      }
    }
  }
  return out.sort();
}

async function readReplica(n: ChaosNode): Promise<ReplicaState> {
  const state: ReplicaState = new Map();
  for (const repoId of listRepos(n)) {
    const dir = repoDir(n, repoId);
    let head = '';
    try {
      head = readFileSync(path.join(dir, 'HEAD'), 'utf8').trim();
    } catch {
      head = '(unreadable)';
    }
    const res = await run('git', ['--git-dir', dir, 'for-each-ref', '--format=%(objectname) %(refname)'], { env: checkerEnv, timeoutMs: 30_000, allowFail: true });
    const refs: Record<string, string> = {};
    if (res.code !== 0) refs['(for-each-ref failed)'] = res.stderr.trim();
    for (const line of res.stdout.split('\n')) {
      if (line === '') continue;
      const [oid, ref] = line.split(' ') as [string, string];
      if (!ref.startsWith('refs/lost+found/')) refs[ref] = oid;
    }
    state.set(repoId, { head, refs });
  }
  return state;
}

function stateKey(s: ReplicaState): string {
  return JSON.stringify([...s].map(([id, r]) => [id, r.head, Object.entries(r.refs).sort()]));
}

/** First difference between two replicas, for the report. */
function describeDifference(a: ChaosNode, sa: ReplicaState, b: ChaosNode, sb: ReplicaState): string {
  const ids = [...new Set([...sa.keys(), ...sb.keys()])].sort();
  const diffs: string[] = [];
  for (const id of ids) {
    const ra = sa.get(id);
    const rb = sb.get(id);
    if (!ra || !rb) {
      diffs.push(`${id} exists on ${ra ? a.name : b.name} only`);
      continue;
    }
    if (ra.head !== rb.head) diffs.push(`${id} HEAD ${a.name}='${ra.head}' ${b.name}='${rb.head}'`);
    for (const ref of [...new Set([...Object.keys(ra.refs), ...Object.keys(rb.refs)])].sort()) {
      if (ra.refs[ref] !== rb.refs[ref]) diffs.push(`${id} ${ref} ${a.name}=${ra.refs[ref] ?? '(none)'} ${b.name}=${rb.refs[ref] ?? '(none)'}`);
    }
  }
  return diffs.slice(0, 10).join('; ');
}

/**
 * Processes working for the nodes: in one of their process groups (those of killed nodes included,
 * where orphaned gits stay), or with a cwd inside a DATA_DIR. `exclude`: the running nodes' pids.
 */
function nodeProcesses(exclude: Set<number>): { pid: number; command: string; where: string }[] {
  const groups = new Set(nodes.flatMap((n) => [...n.node.groups]));
  const out: { pid: number; command: string; where: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (exclude.has(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] === 'Z') continue; // a zombie holds nothing
      const pgid = Number(fields[2]);
      let cwd = '';
      try {
        cwd = readlinkSync(`/proc/${pid}/cwd`);
      } catch {
        // not ours to read
      }
      if (groups.has(pgid) || nodes.some((n) => cwd === n.dataDir || cwd.startsWith(`${n.dataDir}/`))) {
        const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
        // A running node keeps an idle `update-ref --stdin` per busy repo as the next push's session
        // (lib/git/ref-txn.ts); it holds no lock between transactions, and one that does hold a prepared
        // transaction shows up as lock files, which are checked separately.
        if (exclude.has(Number(fields[1])) && UPDATE_REF_SESSION_COMMAND.test(command)) continue;
        const owner = nodes.find((n) => n.node.groups.has(pgid) || cwd.startsWith(`${n.dataDir}/`));
        out.push({
          pid,
          command,
          where: `state ${fields[0]}, ppid ${fields[1]}, group ${pgid} of ${owner?.name ?? '?'}${owner && isRunning(owner) && owner.node.pid === pgid ? ' (running)' : ' (dead)'}, cwd ${cwd}`,
        });
      }
    } catch {
      // exited while we looked
    }
  }
  return out;
}

async function findLockFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith('.lock')) out.push(p);
    }
  };
  await walk(dir);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The run

async function main(): Promise<void> {
  say(`chaos: ${NODE_COUNT} nodes, ${CLIENT_COUNT} clients, ${DURATION_MS / 1000} s ${FAULTS ? 'of faults' : 'without faults'}, seed ${SEED}; data in ${root}`);
  await startCluster();

  // Setup, before any fault: the push repos with one commit on the shared branch.
  const setup: Client = {
    id: 0,
    dir: path.join(root, 'clients', 'setup.git'),
    env: gitClientEnv(path.join(root, 'clients', 'home-setup'), {
      GIT_AUTHOR_NAME: 'setup',
      GIT_AUTHOR_EMAIL: 'setup@chaos.invalid',
      GIT_COMMITTER_NAME: 'setup',
      GIT_COMMITTER_EMAIL: 'setup@chaos.invalid',
      GIT_AUTHOR_DATE: '1700000000 +0000',
      GIT_COMMITTER_DATE: '1700000000 +0000',
    }),
    tips: new Map(),
    counter: 0,
  };
  await git(['init', '-q', '--bare', setup.dir], setup.env);
  const base = await makeCommit(setup, []);
  for (const repoId of PUSH_REPOS) {
    const created = await api(setup, 'create', nodes[0]!, repoId);
    if (created.outcome !== 'ok') throw new Error(`setup: creating ${repoId} failed: ${created.detail}`);
    // A repo just created may still be catching up on the node that coordinates its pushes.
    let pushed = await push(setup, 'push-shared', nodes[0]!, repoId, [{ ref: SHARED_REF, oid: base }], false);
    for (const deadline = Date.now() + 30_000; pushed.outcome !== 'ok' && Date.now() < deadline; ) {
      await sleep(300);
      pushed = await push(setup, 'push-shared', nodes[0]!, repoId, [{ ref: SHARED_REF, oid: base }], false);
    }
    if (pushed.outcome !== 'ok') throw new Error(`setup: first push to ${repoId} failed: ${pushed.detail}`);
  }
  const clients = await Promise.all(Array.from({ length: CLIENT_COUNT }, (_, i) => makeClient(i + 1, base)));

  say('workload and nemesis start');
  const loops = clients.map((c) => clientLoop(c));
  const nemesisDone = FAULTS ? nemesis() : Promise.resolve();
  await sleep(DURATION_MS);
  stopNemesis = true;
  await nemesisDone;
  stopClients = true;
  say('faults over: waiting for in-flight operations');
  await Promise.all(loops);
  say('healing: every node but the one killed for good restarted, pauses and partitions ended');
  await healAll();
  const violations: string[] = [];
  await declareDead(violations);
  const healedAt = Date.now();

  const notes: string[] = [];
  const live = liveNodes();

  // Convergence: every live replica holds the same repos, HEADs and refs.
  let states: ReplicaState[] = [];
  let convergedMs: number | undefined;
  while (Date.now() - healedAt < CONVERGE_TIMEOUT_MS) {
    states = await Promise.all(live.map((n) => readReplica(n)));
    if (states.every((s) => stateKey(s) === stateKey(states[0]!))) {
      convergedMs = Date.now() - healedAt;
      break;
    }
    await sleep(500);
  }
  if (convergedMs === undefined) {
    const diffs: string[] = [];
    for (let i = 1; i < live.length; i += 1) {
      if (stateKey(states[i]!) !== stateKey(states[0]!)) diffs.push(`${live[0]!.name} vs ${live[i]!.name}: ${describeDifference(live[0]!, states[0]!, live[i]!, states[i]!)}`);
    }
    violations.push(`replicas did not converge within ${CONVERGE_TIMEOUT_MS / 1000} s of healing: ${diffs.join(' || ')}`);
  } else {
    say(`converged ${(convergedMs / 1000).toFixed(1)} s after healing`);
  }

  // Every acknowledged push is at or behind the final tip of its ref, on every live node.
  const required = requiredAncestors(history);
  for (const [i, n] of live.entries()) {
    const state = states[i]!;
    for (const [key, acked] of required) {
      const [repoId, ref] = key.split(' ') as [string, string];
      const tip = state.get(repoId)?.refs[ref];
      if (tip === undefined) {
        violations.push(`${n.name}: ${repoId} ${ref} is missing, though ${acked.length} push(es) to it were acknowledged (last ${acked.at(-1)!.oid}, op #${acked.at(-1)!.seq})`);
        continue;
      }
      const res = await run('git', ['--git-dir', repoDir(n, repoId), 'rev-list', tip], { env: checkerEnv, timeoutMs: 60_000, allowFail: true });
      const ancestors = new Set(res.stdout.split('\n'));
      for (const a of acked) {
        if (!ancestors.has(a.oid)) {
          const op = history.find((o) => o.seq === a.seq)!;
          violations.push(`${n.name}: acknowledged push lost: ${repoId} ${ref} ${a.oid} (op #${a.seq} by client ${op.client} via ${op.node} at ${op.endMs / 1000} s) is not an ancestor of the final tip ${tip}`);
        }
      }
    }
  }

  // Repos: the push repos everywhere; each churn repo in a state its creates and deletes allow.
  for (const [i, n] of live.entries()) {
    const state = states[i]!;
    for (const repoId of PUSH_REPOS) if (!state.has(repoId)) violations.push(`${n.name}: ${repoId} (created before the run) is gone`);
    for (const c of clients) {
      for (const repoId of churnRepos(c.id)) {
        const ops = history.filter((o) => o.repoId === repoId);
        const allowed = allowedRepoStates(ops);
        const actual = state.has(repoId) ? 'present' : 'absent';
        if (!allowed.has(actual)) {
          const last = [...ops].reverse().find((o) => o.outcome !== 'indeterminate');
          violations.push(
            `${n.name}: ${repoId} is ${actual}, but the client was told otherwise (last definite answer: ${last?.kind} #${last?.seq} via ${last?.node}: ${last?.outcome} ${last?.detail})`,
          );
        }
      }
    }
  }

  // After a quiet moment no git may run for the nodes (orphans of killed nodes included), and then no
  // lock file may be left in any repo.
  const livePids = new Set(live.filter(isRunning).map((n) => n.node.pid));
  let leftovers = nodeProcesses(livePids);
  const procDeadline = Date.now() + LEFTOVER_PROCESS_WAIT_MS;
  while (leftovers.length > 0 && Date.now() < procDeadline) {
    await sleep(250);
    leftovers = nodeProcesses(livePids);
  }
  for (const p of leftovers) violations.push(`process left running ${LEFTOVER_PROCESS_WAIT_MS / 1000} s after healing: pid ${p.pid} ${p.command.slice(0, 200)} (${p.where})`);
  // A background `git gc --auto` or catch-up may hold a lock for a moment: only a lock file that is
  // still there a few seconds later, with the same mtime, was left behind.
  const lockSnapshot = async (): Promise<Map<string, number>> => {
    const found = new Map<string, number>();
    for (const n of live) {
      for (const repoId of listRepos(n)) {
        for (const lock of await findLockFiles(repoDir(n, repoId))) {
          try {
            found.set(lock, (await fs.stat(lock)).mtimeMs);
          } catch {
            // removed meanwhile
          }
        }
      }
    }
    return found;
  };
  const firstLocks = await lockSnapshot();
  if (firstLocks.size > 0) {
    await sleep(3000);
    const secondLocks = await lockSnapshot();
    for (const [lock, mtimeMs] of firstLocks) {
      if (secondLocks.get(lock) === mtimeMs) violations.push(`lock file left: ${path.relative(root, lock)}`);
    }
  }

  // git fsck on every live replica.
  for (const n of live) {
    for (const repoId of listRepos(n)) {
      const res = await run('git', ['--git-dir', repoDir(n, repoId), 'fsck', '--no-dangling', '--no-progress'], { env: checkerEnv, timeoutMs: 120_000, allowFail: true });
      const findings = `${res.stdout}${res.stderr}`.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('notice:'));
      if (res.code !== 0 || findings.length > 0) violations.push(`${n.name}: git fsck ${repoId} exited ${res.code}: ${findings.slice(0, 5).join(' | ')}`);
    }
  }

  // Liveness: every push repo takes a write again within 30 s (a repo left locked by a dead coordinator
  // would not).
  if (convergedMs !== undefined) {
    const probe: Client = { ...setup, counter: setup.counter };
    for (const repoId of PUSH_REPOS) {
      const deadline = Date.now() + WRITE_PROBE_TIMEOUT_MS;
      const oid = await makeCommit(probe, [base]);
      let last: OpRecord | undefined;
      for (let attempt = 0; Date.now() < deadline; attempt += 1) {
        last = await push(probe, 'push-own', live[attempt % live.length]!, repoId, [{ ref: `refs/heads/probe-${attempt}`, oid }], false);
        if (last.outcome === 'ok') break;
        await sleep(500);
      }
      if (last?.outcome !== 'ok') violations.push(`${repoId} takes no push ${WRITE_PROBE_TIMEOUT_MS / 1000} s after healing: ${last?.detail}`);
    }
  }

  // Figures.
  const kinds: OpKind[] = ['push-own', 'push-atomic', 'push-shared', 'create', 'delete'];
  const clientOps = history.filter((o) => o.client !== 0);
  const lines = kinds.map((k) => {
    const ops = clientOps.filter((o) => o.kind === k);
    const count = (oc: Outcome): number => ops.filter((o) => o.outcome === oc).length;
    return `  ${k.padEnd(12)} ${String(ops.length).padStart(5)} sent  ${String(count('ok')).padStart(5)} acknowledged  ${String(count('failed')).padStart(5)} refused  ${String(count('indeterminate')).padStart(5)} indeterminate`;
  });
  process.stdout.write(
    [
      '',
      `chaos figures (seed ${SEED}, ${NODE_COUNT} nodes, ${CLIENT_COUNT} clients, ${DURATION_MS / 1000} s):`,
      'operations:',
      ...lines,
      `faults injected: ${Object.entries(faults).map(([k, v]) => `${k} ${v}`).join(', ')}`,
      `convergence: ${convergedMs === undefined ? `not within ${CONVERGE_TIMEOUT_MS / 1000} s` : `${(convergedMs / 1000).toFixed(1)} s after healing`}`,
      `violations: ${violations.length}`,
      ...violations.map((v) => `  VIOLATION ${v}`),
      ...notes.map((v) => `  note: ${v}`),
      '',
    ].join('\n'),
  );
  await fs.writeFile(path.join(root, 'history.json'), JSON.stringify(history, null, 1));

  await Promise.all(nodes.map((n) => n.relay.close()));
  if (violations.length > 0 || args.keep) {
    process.stdout.write(`node logs, data dirs and history.json kept in ${root}\n`);
    keepRoot = true;
  }
  if (violations.length > 0) throw new ChaosViolations(violations.length);
}

class ChaosViolations extends Error {
  constructor(count: number) {
    super(`${count} violation(s)`);
  }
}

let keepRoot = false;
process.on('exit', () => {
  if (!keepRoot) rmSync(root, { recursive: true, force: true });
});
// A run stopped from outside (the suite's deadline, ^C) keeps what shows where it stood: the node
// logs and data dirs, and the last phase it printed.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.prependOnceListener(signal, () => {
    keepRoot = true;
    say(`${signal} before the run ended: node logs and data dirs kept in ${root}`);
  });
}

// The whole run is bounded: faults, drain, healing, convergence and checks.
runMain(
  'chaos',
  () =>
    main().catch((err: unknown) => {
      // Whatever went wrong, the logs are what explains it.
      keepRoot = true;
      process.stdout.write(`node logs and data dirs kept in ${root}\n`);
      throw err;
    }),
  DURATION_MS + CONVERGE_TIMEOUT_MS + 240_000,
);
