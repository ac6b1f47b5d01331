// A deterministic in-memory cluster that runs the REAL TxnDriver (lib/cluster/txn-driver.ts) on every node,
// with each of its effects injected: an in-memory transaction log (what was appended survives a
// crash), an in-memory replica (refs per repo and staged creates survive a crash; the ref locks a
// prepared push holds in git do not), a transport whose requests and replies are events in one
// queue, and a manual clock whose timers are events in the same queue. Nothing here sleeps: after
// each event the microtasks are drained (setImmediate), so one seed always gives one run.
//
// Two ways to drive it:
// - by hand (txn-core.spec.ts, push-core.spec.ts): `begin` a transaction, `run` the messages with
//   drop/duplicate/pick filters, `advance` the clock, `crash`/`restart` nodes, `recover` one node
//   (a round of resolveInDoubtOnce), `sync` (syncOnce);
// - seeded (`runSeed`, driver-sim.spec.ts, scripts/sim.ts): random pushes, creates and deletes through
//   random coordinators, message delay, loss, duplication and reordering, crashes with restart from
//   the log, a minority killed for good, the server's background rounds; invariants checked after
//   every event and, once the faults stop and the cluster heals, at the end.

import type { Logger } from '../../lib/base/logger.js';
import type { PushSource, ReplicaStore } from '../../lib/storage/replica.js';
import { mutantCore, type MutantName } from './sim-mutants.js';
import type { Clock } from '../../lib/base/clock.js';
import { TxnDriver, type Transport } from '../../lib/cluster/txn-driver.js';
import {
  ZERO_OID,
  compareVersions,
  type CatalogEntry,
  type CoordinatorResult,
  type LogEntry,
  type NodeId,
  type QueryAnswer,
  type RefUpdate,
  type TxnMessage,
  type TxnOp,
  type Vote,
} from '../../lib/core/txn-core.js';

export type Envelope =
  | { kind: 'msg'; from: NodeId; to: NodeId; txnId: string; msg: TxnMessage }
  | { kind: 'query'; from: NodeId; to: NodeId; txnId: string; refuse: boolean; asCoordinator: boolean }
  | { kind: 'catalog'; from: NodeId; to: NodeId; txnId: '' }
  | { kind: 'state'; from: NodeId; to: NodeId; txnId: ''; repoId: string }
  | { kind: 'reply'; from: NodeId; to: NodeId; txnId: string; about: string; vote?: Vote; final?: boolean; failed?: boolean };

import { catchUpSource, copyStillValid } from '../../lib/core/convergence.js';
import { seededRandom } from '../../lib/core/seeded-random.js';
export { seededRandom };

/** Lets every promise chain that can move without a new event settle. */
const drain = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const never = <T>(): Promise<T> => new Promise<T>(() => undefined);

interface NetEvent {
  seq: number;
  readyAt: number;
  env: Envelope;
  run: () => void;
}

interface Timer {
  seq: number;
  at: number;
  owner: Incarnation | undefined;
  fn: () => void;
  cancelled: boolean;
}

/** What a node keeps across a crash. */
interface Disk {
  log: LogEntry[];
  repos: Map<string, Record<string, string>>;
  staging: Set<string>;
}

/** One run of a node's process: everything it holds in memory dies with it. */
class Incarnation {
  alive = true;
  driver!: TxnDriver;
  /** Ref locks a prepared peer push holds in git (lost on a crash, as git aborts the open transaction). */
  readonly held = new Map<string, { repoId: string; refs: string[] }>();
  roundRunning = false;
  /** Resolves once the driver's start() is done (the node serves nothing before). */
  started: Promise<void> = Promise.resolve();
  constructor(readonly node: SimNode) {}
}

export class SimNode {
  up = false;
  /** Killed for good: never restarted. */
  dead = false;
  readonly disk: Disk = { log: [], repos: new Map(), staging: new Set() };
  /** Changes applied to the replica, in order (`create:o/r@1`, `push:o/r@2`, `sync:o/r:live@1`). */
  readonly applied: string[] = [];
  inc: Incarnation | undefined;
  constructor(readonly id: NodeId) {}

  get participant(): TxnDriver['participant'] {
    if (!this.inc) throw new Error(`${this.id} never started`);
    return this.inc.driver.participant;
  }

  get driver(): TxnDriver {
    if (!this.inc) throw new Error(`${this.id} never started`);
    return this.inc.driver;
  }

  get log(): LogEntry[] {
    return this.disk.log;
  }

  get refs(): Map<string, Record<string, string>> {
    return this.disk.repos;
  }

  /** What this replica has staged or holds locked for transactions. */
  get staged(): Set<string> {
    return new Set([...this.disk.staging, ...(this.inc?.held.keys() ?? [])]);
  }
}

export interface SimTimeouts {
  prepareTimeoutMs: number;
  commitTimeoutMs: number;
  commitResends: number;
}

export interface NetFaults {
  lossRate: number;
  duplicateRate: number;
  maxDelayMs: number;
  /** A request to a node that is down: refused at once (probability), else lost (the sender times out). */
  refusedRate: number;
}

const NO_FAULTS: NetFaults = { lossRate: 0, duplicateRate: 0, maxDelayMs: 0, refusedRate: 0 };

type Filters = { drop?: (e: Envelope) => boolean; duplicate?: (e: Envelope) => boolean; pick?: (n: number) => number };

export class Sim {
  now = 0;
  readonly nodes = new Map<NodeId, SimNode>();
  readonly results = new Map<string, CoordinatorResult>();
  /** Effects in order as `node:what:txnId`: specs check persist-before-reply from it. */
  readonly trace: string[] = [];
  /** A readable account of the run, filled when `verbose` (scripts/sim.ts). */
  readonly story: string[] = [];
  verbose = false;
  /** Off in seeded runs (the trace is for the hand-driven specs). */
  tracing = true;
  /** Bumped by every change to a log or a replica: invariants are checked again only after one. */
  mutations = 0;
  /** Verdicts of recovery rounds, from the driver's log lines: txnId → verdict. */
  readonly verdicts = new Map<string, string>();
  readonly net: NetEvent[] = [];
  readonly timers: Timer[] = [];
  faults: NetFaults = NO_FAULTS;
  random: () => number = () => 0;
  requestTimeoutMs: number;
  /** Pushes whose coordinator answered the pre-receive hook "ok" (receive-pack then moved its refs). */
  readonly gates = new Map<string, () => void>();
  private seq = 0;
  private nextTxn = 0;

  constructor(
    ids: NodeId[],
    readonly quorum: number,
    readonly timeouts: SimTimeouts = { prepareTimeoutMs: 100, commitTimeoutMs: 100, commitResends: 2 },
    options: { requestTimeoutMs?: number; start?: boolean } = {},
  ) {
    this.requestTimeoutMs = options.requestTimeoutMs ?? 1000;
    for (const id of ids) this.nodes.set(id, new SimNode(id));
    // Every node starts from an empty log at once (no I/O happens before the first event).
    if (options.start !== false) for (const id of ids) void this.restart(id);
  }

  node(id: NodeId): SimNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  get ids(): NodeId[] {
    return [...this.nodes.keys()];
  }

  say(line: string): void {
    if (this.verbose) this.story.push(`${String(this.now).padStart(6)} ${line}`);
  }

  // ------------------------------------------------------------------ the queue

  addTimer(owner: Incarnation | undefined, fn: () => void, ms: number): Timer {
    const timer: Timer = { seq: (this.seq += 1), at: this.now + Math.max(0, ms), owner, fn, cancelled: false };
    this.timers.push(timer);
    return timer;
  }

  private enqueue(env: Envelope, run: () => void, delayMs = 0): void {
    this.net.push({ seq: (this.seq += 1), readyAt: this.now + delayMs, env, run });
  }

  private nextTimer(until: number): Timer | undefined {
    let best: Timer | undefined;
    for (let i = this.timers.length - 1; i >= 0; i -= 1) {
      const t = this.timers[i]!;
      if (t.cancelled || (t.owner && !t.owner.alive)) {
        this.timers.splice(i, 1);
        continue;
      }
      if (t.at <= until && (!best || t.at < best.at || (t.at === best.at && t.seq < best.seq))) best = t;
    }
    return best;
  }

  private fire(timer: Timer): void {
    this.timers.splice(this.timers.indexOf(timer), 1);
    this.now = Math.max(this.now, timer.at);
    timer.fn();
  }

  /** Delivers queued network events until none is left (timers do not fire). */
  async run(options: Filters = {}): Promise<void> {
    await drain();
    for (let guard = 0; this.net.length > 0; guard += 1) {
      if (guard > 100_000) throw new Error('simulation did not settle');
      const index = options.pick ? options.pick(this.net.length) : 0;
      const [event] = this.net.splice(index, 1);
      if (!event || options.drop?.(event.env)) continue;
      event.run();
      await drain();
      // The copy arrives once the first was handled (a copy overtaking it is the seeded mode's job).
      if (options.duplicate?.(event.env)) {
        event.run();
        await drain();
      }
    }
  }

  /** Moves the clock, firing due timers in order and delivering what each sent (with the same filters). */
  async advance(ms: number, options: Filters = {}): Promise<void> {
    const until = this.now + ms;
    await this.run(options);
    for (let timer = this.nextTimer(until); timer; timer = this.nextTimer(until)) {
      this.fire(timer);
      await this.run(options);
    }
    this.now = until;
  }

  /** Seeded mode: the earliest event (network or timer) happens next. Returns false when none is left. */
  async step(): Promise<boolean> {
    let net: NetEvent | undefined;
    let netIndex = -1;
    this.net.forEach((e, i) => {
      if (!net || e.readyAt < net.readyAt || (e.readyAt === net.readyAt && e.seq < net.seq)) [net, netIndex] = [e, i];
    });
    const timer = this.nextTimer(Infinity);
    if (!net && !timer) return false;
    if (net && (!timer || net.readyAt < timer.at || (net.readyAt === timer.at && net.seq < timer.seq))) {
      this.net.splice(netIndex, 1);
      this.now = Math.max(this.now, net.readyAt);
      net.run();
    } else if (timer) {
      this.fire(timer);
    }
    await drain();
    return true;
  }

  // ------------------------------------------------------------------ the network

  /** One request from `inc` to node `to`; its answer comes back as a reply event. */
  private request<T>(inc: Incarnation, env: Envelope, handle: (target: Incarnation) => Promise<T>, timeoutMs = this.requestTimeoutMs): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void): void => {
        if (settled || !inc.alive) return;
        settled = true;
        timeout.cancelled = true;
        fn();
      };
      const timeout = this.addTimer(inc, () => settle(() => reject(new Error('request timed out'))), timeoutMs);
      const about = env.kind === 'msg' ? env.msg.type : env.kind;
      const reply = (value: T | undefined, failed: boolean): void => {
        const back: Envelope = {
          kind: 'reply',
          from: env.to,
          to: env.from,
          txnId: env.txnId,
          about,
          ...(env.kind === 'msg' && value !== undefined ? { vote: value as Vote } : {}),
          ...(env.kind === 'msg' && env.msg.type === 'commitTxn' ? { final: env.msg.final ?? true } : {}),
          ...(failed ? { failed } : {}),
        };
        if (this.random() < this.faults.lossRate) return;
        this.enqueue(back, () => settle(() => (failed ? reject(new Error('peer failed')) : resolve(value as T))), this.delay());
      };
      const deliver = (): void => {
        const target = this.node(env.to);
        const tinc = target.inc;
        if (!target.up || !tinc?.alive) {
          if (this.random() < this.faults.refusedRate) settle(() => reject(new Error('connection refused')));
          return;
        }
        handle(tinc).then(
          (value) => {
            if (tinc.alive) reply(value, false);
          },
          () => {
            if (tinc.alive) reply(undefined, true);
          },
        );
      };
      if (this.random() < this.faults.lossRate) return;
      this.enqueue(env, deliver, this.delay());
      if (this.random() < this.faults.duplicateRate) this.enqueue(env, deliver, this.delay());
    });
  }

  private delay(): number {
    return this.faults.maxDelayMs > 0 ? Math.floor(this.random() * this.faults.maxDelayMs) : 0;
  }

  private transport(inc: Incarnation): Transport {
    const from = inc.node.id;
    return {
      // The driver's own timeout for a message (a prepare's), as PeerClient honours it.
      sendTxn: (to: NodeId, msg: TxnMessage & { inlineFiles?: Record<string, string> }, _requestId?: string, timeoutMs?: number): Promise<Vote> => {
        const { inlineFiles: _files, ...bare } = msg;
        const m = bare as TxnMessage;
        if (m.type === 'commitTxn' || m.type === 'abortTxn') this.tracing && this.trace.push(`${from}:coord-send-${m.type}:${m.txnId}`);
        return this.request(inc, { kind: 'msg', from, to, txnId: m.txnId, msg: m }, (t) => t.driver.handleMessage(m), timeoutMs);
      },
      queryTxn: (to: NodeId, txnId: string, opts: { refuse: boolean; asCoordinator: boolean; repoId?: string }): Promise<Omit<QueryAnswer, 'effects'>> =>
        this.request(inc, { kind: 'query', from, to, txnId, ...opts }, (t) => t.driver.handleQuery(txnId, opts.refuse, opts.asCoordinator, opts.repoId)),
      catalog: (to: NodeId): Promise<Record<string, CatalogEntry>> =>
        this.request(inc, { kind: 'catalog', from, to, txnId: '' }, async (t) => structuredClone(t.driver.participant.catalog())),
    } as unknown as Transport;
  }

  // ------------------------------------------------------------------ one node's injected effects

  private clock(inc: Incarnation): Clock {
    return {
      now: () => this.now,
      setTimeout: (fn, ms) => this.addTimer(inc, fn, ms),
      clearTimeout: (handle) => {
        if (handle) (handle as Timer).cancelled = true;
      },
    };
  }

  private logger(inc: Incarnation): Logger {
    const write = (level: string) => (message: string, meta?: Record<string, unknown>) => {
      if (message === 'in-doubt txn' && meta) this.verdicts.set(String(meta.txn_id), String(meta.verdict));
      if (this.verbose && inc.alive) this.say(`${inc.node.id} ${level} ${message} ${meta ? JSON.stringify(meta, (_k, v) => (v instanceof Error ? v.message : v)) : ''}`);
    };
    const logger = { info: write('info'), warn: write('warn'), error: write('error'), debug: write('debug'), child: () => logger };
    return logger as unknown as Logger;
  }

  private replica(inc: Incarnation): ReplicaStore {
    const node = inc.node;
    const disk = node.disk;
    // A dead process does nothing more: its pending steps never finish.
    const live = <T>(fn: () => T): Promise<T> => {
      if (!inc.alive) return never<T>();
      try {
        return Promise.resolve(fn());
      } catch (err) {
        return Promise.reject(err);
      }
    };
    const heldBy = (repoId: string, ref: string, except?: string): string | undefined => {
      for (const [txnId, h] of inc.held) if (txnId !== except && h.repoId === repoId && h.refs.includes(ref)) return txnId;
      return undefined;
    };
    const refsOf = (repoId: string): Record<string, string> => {
      const refs = disk.repos.get(repoId);
      if (!refs) throw new Error(`${repoId}: not a git repository`);
      return refs;
    };
    const move = (repoId: string, updates: readonly RefUpdate[], txnId: string): void => {
      this.mutations += 1;
      const refs = refsOf(repoId);
      const edits: RefUpdate[] = [];
      for (const u of updates) {
        const found = refs[u.ref] ?? ZERO_OID;
        if (found === u.new) continue;
        if (found !== u.old) throw new Error(`${u.ref} is at ${found}, expected ${u.old}`);
        if (heldBy(repoId, u.ref, txnId)) throw new Error(`cannot lock ref ${u.ref}: File exists`);
        edits.push(u);
      }
      for (const u of edits) {
        if (u.new === ZERO_OID) delete refs[u.ref];
        else refs[u.ref] = u.new;
      }
    };
    const committedVersion = (txnId: string): string => {
      for (let i = disk.log.length - 1; i >= 0; i -= 1) {
        const e = disk.log[i]!;
        if (e.t === 'committed' && e.txnId === txnId) return `${e.epoch}.${e.generation ?? 0}`;
      }
      return '?';
    };
    return {
      init: (keep) =>
        live(() => {
          for (const txnId of [...disk.staging]) if (!keep.has(txnId)) disk.staging.delete(txnId);
          return [];
        }),
      exists: (repoId) => live(() => disk.repos.has(repoId)),
      recreate: (repoId, reason) =>
        live(() => {
          disk.repos.set(repoId, {});
          const v = inc.driver.participant.repo(repoId);
          node.applied.push(`${reason}:${repoId}:live@${v?.epoch ?? '?'}`);
        }),
      remove: (repoId, reason) =>
        live(() => {
          const had = disk.repos.delete(repoId);
          if (reason === 'sync') node.applied.push(`sync:${repoId}:deleted@${inc.driver.participant.repo(repoId)?.epoch ?? '?'}`);
          else if (reason !== 'repair') node.applied.push(`delete:${repoId}@${committedVersion(reason).split('.')[0]}${had ? '' : ' (absent)'}`);
        }),
      stageCreate: (txnId) => live(() => void disk.staging.add(txnId)),
      commitCreate: (txnId, repoId) =>
        live(() => {
          if (disk.staging.delete(txnId)) {
            disk.repos.set(repoId, {});
            node.applied.push(`create:${repoId}@${committedVersion(txnId).split('.')[0]}`);
          } else if (!disk.repos.has(repoId)) throw new Error(`rename staging/${txnId}.git: ENOENT`);
        }),
      readRefs: (repoId, refs) =>
        live(() => {
          const all = refsOf(repoId);
          if (refs === undefined) return { ...all };
          return Object.fromEntries(refs.filter((r) => all[r] !== undefined).map((r) => [r, all[r]!]));
        }),
      stagePush: (txnId: string, repoId: string, updates: readonly RefUpdate[], source: PushSource) =>
        live(() => {
          const refs = refsOf(repoId);
          for (const u of updates) {
            const other = heldBy(repoId, u.ref, txnId);
            if (other) throw new Error(`cannot lock ref '${u.ref}': File exists`);
          }
          // The coordinator of a push of few refs holds nothing: its receive-pack moves them itself.
          if ((source.own && source.quarantine === undefined) || inc.held.has(txnId)) return;
          for (const u of updates) if ((refs[u.ref] ?? ZERO_OID) !== u.old) throw new Error(`cannot lock ref '${u.ref}': is at ${refs[u.ref]} but expected ${u.old}`);
          inc.held.set(txnId, { repoId, refs: updates.map((u) => u.ref) });
        }),
      applyPush: (txnId, repoId, updates) =>
        live(() => {
          move(repoId, updates, txnId);
          inc.held.delete(txnId);
          node.applied.push(`push:${repoId}@${committedVersion(txnId).split('.')[1]}`);
        }),
      discard: (txnId) =>
        live(() => {
          inc.held.delete(txnId);
          disk.staging.delete(txnId);
        }),
      sweepIncoming: () => live(() => []),
      close: () => undefined,
    };
  }

  // ------------------------------------------------------------------ nodes

  /** Loses the node's memory: its timers, its requests in flight, its git ref locks. Its disk stays. */
  crash(id: NodeId): void {
    const n = this.node(id);
    if (n.inc) n.inc.alive = false;
    n.up = false;
    this.say(`${id} CRASH`);
  }

  /** The refs first seen at each version of each repo (`repo@epoch.generation`), for invariant (b). */
  readonly refsAtVersion = new Map<string, { node: NodeId; refs: string }>();

  /** A defect put back into the core (sim-mutants.ts), to show the simulation finds it. */
  mutant: MutantName | undefined;

  /** A new process on the node's disk: a new TxnDriver replays the log and starts. */
  async restart(id: NodeId): Promise<void> {
    const n = this.node(id);
    if (n.inc?.alive) n.inc.alive = false;
    const inc = new Incarnation(n);
    n.inc = inc;
    inc.driver = new TxnDriver({
      self: id,
      peers: this.ids.filter((p) => p !== id),
      quorum: this.quorum,
      log: {
        replay: () => (inc.alive ? Promise.resolve(structuredClone(n.disk.log)) : never()),
        open: () => (inc.alive ? Promise.resolve() : never()),
        append: (entry: LogEntry) => {
          if (!inc.alive) return never();
          n.disk.log.push(structuredClone(entry));
          this.mutations += 1;
          const txnId = 'txnId' in entry ? entry.txnId : 'repoId' in entry ? entry.repoId : entry.node;
          this.tracing && this.trace.push(`${id}:${entry.t === 'decision' ? 'coord-persist' : 'persist'}:${txnId}`);
          return Promise.resolve();
        },
      },
      replica: this.replica(inc),
      ...(this.mutant ? mutantCore(this.mutant) : {}),
      transport: this.transport(inc),
      logger: this.logger(inc),
      clock: this.clock(inc),
      newTxnId: () => `t${(this.nextTxn += 1)}`,
      timeouts: this.timeouts,
    });
    // The reply of a participant to a protocol message, in-process ones (the coordinator's own) included.
    const handleMessage = inc.driver.handleMessage.bind(inc.driver);
    inc.driver.handleMessage = async (msg, files) => {
      const vote = await handleMessage(msg, files);
      this.tracing && this.trace.push(`${id}:reply:${msg.txnId}`);
      return vote;
    };
    inc.started = inc.driver.start();
    await inc.started;
    if (inc.alive) n.up = true;
    this.say(`${id} started (log ${n.disk.log.length} entries, in doubt ${inc.driver.participant.inDoubt().length})`);
  }

  /**
   * Starts a transaction with `coordinator` as its coordinator; its answer lands in `results`. A push
   * is carried out as PushService does, every other one each way. Handing its refs to the node (a
   * push of many refs): the coordinator's replica holds them locked from its prepare, and once the
   * hook hears ok (committed on a quorum) "receive-pack" moves the objects in and its proc-receive
   * hook opens the gate (true) for the coordinator's own commit. Moving them itself (few refs):
   * "receive-pack" moves each ref whose old value still holds once the hook hears ok, then exits
   * (the gate opens false: the push is applied afresh). A push refused, or not confirmed on a
   * quorum, ends receive-pack with nothing moved (false).
   */
  begin(coordinator: NodeId, op: TxnOp): string {
    const n = this.node(coordinator);
    const inc = n.inc;
    if (!inc?.alive) throw new Error(`${coordinator} is down`);
    const txnId = `t${(this.nextTxn += 1)}`;
    let openGate!: (objectsInPlace: boolean) => void;
    const gate = new Promise<boolean>((resolve) => (openGate = resolve));
    const handsRefs = op.kind === 'push' && this.nextTxn % 2 === 0;
    this.say(`${coordinator} begins ${txnId} ${describe(op)}${handsRefs ? ' (refs handed to the node)' : ''}`);
    void inc.started
      .then(() => inc.driver.runTxn(op, txnId, { txnId, ...(op.kind === 'push' ? { selfCommitGate: gate } : {}), ...(handsRefs ? { quarantine: '' } : {}) }))
      .then((result) => {
        if (!inc.alive) return;
        this.results.set(txnId, result);
        this.say(`${coordinator} answers ${txnId}: ${result.outcome}${result.outcome === 'committed' ? ` ${result.epoch}.${result.generation} confirmed ${result.confirmed.length}` : ` ${result.code}`}`);
        const ok = op.kind === 'push' && result.outcome === 'committed' && result.confirmed.length >= this.quorum;
        if (ok && !handsRefs) {
          // receive-pack moves each ref whose old value still holds, then exits.
          const refs = n.disk.repos.get(op.repoId);
          if (refs) {
            this.mutations += 1;
            for (const u of op.updates) {
              if ((refs[u.ref] ?? ZERO_OID) !== u.old || [...inc.held.values()].some((h) => h.repoId === op.repoId && h.refs.includes(u.ref))) continue;
              if (u.new === ZERO_OID) delete refs[u.ref];
              else refs[u.ref] = u.new;
            }
          }
        }
        openGate(ok && handsRefs);
      });
    return txnId;
  }

  /** One recovery round on `id` after the in-doubt grace period: returns the verdicts it logged. */
  async recover(id: NodeId, options: Filters = {}): Promise<Record<string, string>> {
    await this.advance(this.timeouts.prepareTimeoutMs, options);
    this.verdicts.clear();
    await this.settle(this.node(id).driver.resolveInDoubtOnce(), options);
    return Object.fromEntries(this.verdicts);
  }

  /** Anti-entropy on `id` from every node that answers. */
  async sync(id: NodeId): Promise<string[]> {
    return this.settle(this.node(id).driver.syncOnce());
  }

  /** Delivers messages until `work` settles (no timer fires). */
  async settle<T>(work: Promise<T>, options: Filters = {}): Promise<T> {
    let done = false;
    const result = work.finally(() => (done = true));
    for (let guard = 0; !done; guard += 1) {
      if (guard > 100_000) throw new Error('work did not settle');
      await this.run(options);
      if (!done) {
        const timer = this.nextTimer(Infinity);
        if (!timer) break;
        this.fire(timer);
      }
    }
    return result;
  }
}

function describe(op: TxnOp): string {
  if (op.kind !== 'push') return `${op.kind} ${op.repoId}`;
  return `push ${op.repoId} base ${op.base.epoch}.${op.base.generation} ${op.updates.map((u) => `${u.ref.replace('refs/heads/', '')} ${u.old.slice(-4)}->${u.new.slice(-4)}`).join(' ')}`;
}

export { compareVersions };

// ---------------------------------------------------------------------------------------------
// Seeded runs: a workload, a nemesis, the server's background rounds, and the invariants.

export interface SeedOptions {
  seed: number;
  nodes: 3 | 5;
  /** Simulated time with faults, then with the cluster healed. */
  faultMs?: number;
  healMs?: number;
  verbose?: boolean;
  /** Run a core with one of issue 7's defects put back (sim-mutants.ts). */
  mutant?: MutantName;
  /**
   * Whether the operator declares each node dead for good (`quorum-git node declare-dead`), on the
   * nodes up some time after it died and on every node at healing (default true). Without it a
   * transaction whose outcome rests on a dead acceptor may wait for good: counted in `blocked`.
   */
  declareDead?: boolean;
}

export interface SeedReport {
  seed: number;
  nodes: number;
  violation?: string;
  acked: number;
  ops: number;
  crashes: number;
  dead: NodeId[];
  events: number;
  story: string[];
  /**
   * Repos left locked at the end by a transaction whose outcome rests on an acceptor dead for good
   * (two faults: see README, Limitations). Allowed, and counted so the spec can say how often.
   */
  blocked: string[];
}

interface Acked {
  txnId: string;
  op: TxnOp;
  epoch: number;
  generation: number;
}

class Violation extends Error {}

const REPOS = ['o/a', 'o/b'];
const REFS = ['refs/heads/main', 'refs/heads/dev', 'refs/heads/f'];
const ROUND_MS = 250;

/** Runs one seed; returns a violation (the invariant and what broke it) or none. */
export async function runSeed(options: SeedOptions): Promise<SeedReport> {
  const random = seededRandom(options.seed * 7919 + options.nodes);
  const n = options.nodes;
  const ids = Array.from({ length: n }, (_, i) => `n${i + 1}`);
  const quorum = Math.floor(n / 2) + 1;
  const sim = new Sim(ids, quorum, { prepareTimeoutMs: 200, commitTimeoutMs: 100, commitResends: 2 }, { requestTimeoutMs: 150, start: false });
  sim.verbose = options.verbose ?? false;
  sim.mutant = options.mutant;
  sim.tracing = false;
  sim.random = random;
  const faultMs = options.faultMs ?? 2500;
  const healMs = options.healMs ?? 3000;
  const report: SeedReport = { seed: options.seed, nodes: n, acked: 0, ops: 0, crashes: 0, dead: [], events: 0, story: sim.story, blocked: [] };
  const acked: Acked[] = [];
  const ackedDeletes: Acked[] = [];
  let oid = 0;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const upNodes = (): SimNode[] => [...sim.nodes.values()].filter((x) => x.up && x.inc?.alive);

  // The server's recovery loop on each running node: in-doubt resolution, anti-entropy, catch-up.
  const scheduleRounds = (node: SimNode): void => {
    const inc = node.inc!;
    const tick = (): void => {
      if (!inc.alive) return;
      sim.addTimer(inc, tick, ROUND_MS + Math.floor(random() * 50));
      if (inc.roundRunning || !node.up) return;
      inc.roundRunning = true;
      void (async () => {
        await inc.driver.resolveInDoubtOnce();
        const behind = await inc.driver.syncOnce();
        for (const repoId of behind) await catchUp(sim, inc, repoId);
      })()
        .catch((err: Error) => sim.say(`${node.id} round failed: ${err.message}`))
        .finally(() => (inc.roundRunning = false));
    };
    sim.addTimer(inc, tick, Math.floor(random() * ROUND_MS));
  };
  const start = async (id: NodeId): Promise<void> => {
    await sim.restart(id);
    scheduleRounds(sim.node(id));
  };
  // The operator's `quorum-git node declare-dead`: told to every node up at the time.
  const declareDead = options.declareDead ?? true;
  const declare = async (deadId: NodeId): Promise<void> => {
    for (const node of upNodes()) {
      const problem = await node.inc!.driver.setMembership(deadId, true);
      if (problem !== undefined) throw new Error(`declare-dead ${deadId} on ${node.id}: ${problem}`);
      sim.say(`${node.id} told ${deadId} is dead for good`);
    }
  };

  const launch = (): void => {
    const up = upNodes();
    if (up.length === 0) return;
    const via = pick(up);
    const repoId = pick(REPOS);
    const p = via.participant;
    const roll = random();
    let op: TxnOp;
    if (roll < 0.12) op = { kind: 'create', repoId };
    else if (roll < 0.2) op = { kind: 'delete', repoId };
    else {
      // Built as PushService does: the coordinator's own version and refs.
      const refs = via.disk.repos.get(repoId);
      if (!p.isLive(repoId) || !refs) return;
      const touched = [...new Set([pick(REFS), ...(random() < 0.3 ? [pick(REFS)] : [])])];
      const updates = touched.map((ref): RefUpdate => {
        const old = refs[ref] ?? ZERO_OID;
        const del = old !== ZERO_OID && random() < 0.1;
        return { ref, old, new: del ? ZERO_OID : (oid += 1).toString(16).padStart(40, '0') };
      });
      op = { kind: 'push', repoId, updates, base: p.versionOf(repoId) };
    }
    report.ops += 1;
    const txnId = sim.begin(via.id, op);
    pending.set(txnId, op);
  };
  const pending = new Map<string, TxnOp>();
  const collect = (): void => {
    for (const [txnId, op] of pending) {
      const result = sim.results.get(txnId);
      if (!result) continue;
      pending.delete(txnId);
      if (result.outcome !== 'committed' || result.confirmed.length < quorum) continue;
      const a = { txnId, op, epoch: result.epoch, generation: result.generation };
      acked.push(a);
      if (op.kind === 'delete') ackedDeletes.push(a);
      report.acked += 1;
    }
  };

  // Setup: both repos created with no faults.
  for (const id of ids) await start(id);
  for (const repoId of REPOS) {
    const t = sim.begin(ids[0]!, { kind: 'create', repoId });
    pending.set(t, { kind: 'create', repoId });
    while (!sim.results.has(t)) if (!(await sim.step())) break;
  }
  collect();

  // The nemesis and the clients, as timers of the simulation itself.
  sim.faults = { lossRate: random() * 0.15, duplicateRate: random() * 0.1, maxDelayMs: 5 + Math.floor(random() * 40), refusedRate: 0.5 };
  const t0 = sim.now;
  const maxDead = Math.floor((n - 1) / 2);
  const opCount = 10 + Math.floor(random() * 15);
  for (let i = 0; i < opCount; i += 1) sim.addTimer(undefined, launch, Math.floor(random() * faultMs));
  const crashCount = Math.floor(random() * (n + 2));
  for (let i = 0; i < crashCount; i += 1) {
    sim.addTimer(
      undefined,
      () => {
        const victim = pick(upNodes());
        if (!victim) return;
        sim.crash(victim.id);
        report.crashes += 1;
        if (report.dead.length < maxDead && random() < 0.25) {
          victim.dead = true;
          report.dead.push(victim.id);
          sim.say(`${victim.id} DEAD for good`);
          if (declareDead) sim.addTimer(undefined, () => void declare(victim.id), 50 + Math.floor(random() * 1500));
          return;
        }
        sim.addTimer(undefined, () => void start(victim.id), 20 + Math.floor(random() * 1500));
      },
      Math.floor(random() * faultMs),
    );
  }

  let checkedAt = -1;
  const check = (final: boolean): void => {
    collect();
    if (sim.mutations !== checkedAt || final) checkDivergence(sim);
    checkedAt = sim.mutations;
    if (final) checkFinal(sim, quorum, acked, ackedDeletes, report, declareDead);
  };
  try {
    while (sim.now < t0 + faultMs) {
      if (!(await sim.step())) break;
      report.events += 1;
      check(false);
    }
    // Heal: no more loss or duplication; every node not dead for good comes back.
    sim.faults = { ...sim.faults, lossRate: 0, duplicateRate: 0, refusedRate: 1 };
    sim.say('HEAL');
    for (const node of sim.nodes.values()) if (!node.dead && !node.up) await start(node.id);
    if (declareDead) for (const deadId of report.dead) await declare(deadId);
    const end = sim.now + healMs;
    while (sim.now < end) {
      if (!(await sim.step())) break;
      report.events += 1;
      check(false);
    }
    check(true);
  } catch (err) {
    if (!(err instanceof Violation)) throw err;
    report.violation = err.message;
  }
  // Stop every process so nothing of this seed runs on.
  for (const node of sim.nodes.values()) if (node.inc) node.inc.alive = false;
  return report;
}

/** The catch-up the server runs for a repo syncOnce reports behind: copy refs and version from the newest peer. */
async function catchUp(sim: Sim, inc: Incarnation, repoId: string): Promise<void> {
  const mine = inc.driver.participant.repo(repoId);
  if (mine?.state !== 'live') return;
  // What each reachable peer's repoState would answer (a replica mid-transaction answers nothing).
  const answers = [...sim.nodes.values()].map((peer) => {
    if (peer === inc.node || !peer.up || !peer.inc?.alive || peer.participant.lockedBy(repoId) !== undefined) return undefined;
    const v = peer.participant.repo(repoId);
    return v ? { peer: peer.id, node: peer, live: v.state === 'live', epoch: v.epoch, generation: v.generation } : undefined;
  });
  const best = catchUpSource(mine, answers);
  if (!best) return;
  const source = best.node;
  // The snapshot is read at the source, under its repo queue, with its version (as repoState does).
  const snapshot = await source.driver.withRepoResult(repoId, async () => {
    if (source.participant.lockedBy(repoId) !== undefined) return undefined;
    return { version: source.participant.versionOf(repoId), refs: { ...(source.disk.repos.get(repoId) ?? {}) } };
  });
  if (!snapshot || !inc.alive) return;
  await inc.driver.withRepo(repoId, async () => {
    const p = inc.driver.participant;
    if (!copyStillValid('catch-up', p.repo(repoId), p.lockedBy(repoId) !== undefined, mine, snapshot.version)) return;
    if (!inc.alive || !inc.node.disk.repos.has(repoId)) return;
    inc.node.disk.repos.set(repoId, snapshot.refs);
    sim.mutations += 1;
    inc.node.applied.push(`catch-up:${repoId}@${snapshot.version.generation}`);
    sim.say(`${inc.node.id} caught up ${repoId} to ${snapshot.version.epoch}.${snapshot.version.generation} from ${source.id}`);
    await inc.driver.caughtUp(repoId, snapshot.version);
  });
}

/**
 * (b) No two replicas at one version of a repo hold different refs (replicas mid-transaction aside),
 * at the same moment or ever: the first refs seen at each version are remembered, so a replica whose
 * refs moved while its version stayed is caught even when the replica it differs from is down by then.
 */
function checkDivergence(sim: Sim): void {
  for (const repoId of REPOS) {
    for (const node of sim.nodes.values()) {
      if (!node.up || !node.inc?.alive) continue;
      const p = node.participant;
      if (!p.isLive(repoId) || p.lockedBy(repoId) !== undefined) continue;
      const refs = node.disk.repos.get(repoId);
      if (!refs) continue;
      const v = p.versionOf(repoId);
      const key = `${repoId}@${v.epoch}.${v.generation}`;
      const mine = Object.keys(refs).sort().map((r) => `${r}=${refs[r]}`).join(' ');
      const other = sim.refsAtVersion.get(key);
      if (other && other.refs !== mine) throw new Violation(`(b) divergence: ${key} on ${other.node} ${other.refs} but on ${node.id} ${mine}`);
      sim.refsAtVersion.set(key, { node: node.id, refs: mine });
    }
  }
}

/** (a) nothing acknowledged lost, (c) no deleted repo back, (d) nothing left in doubt, unapplied or locked. */
function checkFinal(sim: Sim, quorum: number, acked: Acked[], ackedDeletes: Acked[], report: SeedReport, declared: boolean): void {
  const live = [...sim.nodes.values()].filter((x) => !x.dead);
  const dead = new Set([...sim.nodes.values()].filter((x) => x.dead).map((x) => x.id));
  // The one wait the protocol allows with a majority up while no node is declared dead: a node dead
  // for good is one of the transaction's acceptors and its answer decides (it may hold the acceptance
  // that made the commit final, or not). That takes two faults: the dead acceptor and another acceptor
  // lost or refused. Once the operator declared the dead nodes, nothing may wait.
  const blockedByDeadAcceptor = (txnId: string): boolean => {
    if (declared) return false;
    let acceptors: readonly NodeId[] | undefined;
    let accepts = 0;
    for (const node of live) {
      const p = node.participant;
      acceptors ??= p.acceptorsOf(txnId);
      const status = p.status(txnId);
      const decidedCommit = p.decision(txnId)?.outcome === 'commit';
      // A coordinator's own replica of a push that was not confirmed is dropped ('aborted' here) while
      // its commit decision stands: that settles nothing.
      if (status === 'committed' || status === 'committing' || (status === 'aborted' && !decidedCommit)) return false;
      if (status === 'accepted' || decidedCommit) accepts += 1;
    }
    if (!acceptors || !acceptors.some((a) => dead.has(a))) return false;
    const members = new Set(acceptors);
    const liveRefusals = live.filter((node) => members.has(node.id) && node.participant.status(txnId) !== 'accepted' && node.participant.decision(txnId)?.outcome !== 'commit').length;
    return accepts < quorum && liveRefusals <= members.size - quorum;
  };
  for (const node of live) {
    if (!node.up) throw new Violation(`(d) ${node.id} did not come back up`);
    const p = node.participant;
    const doubt = p.inDoubt().filter((t) => !blockedByDeadAcceptor(t.txnId));
    if (doubt.length > 0) throw new Violation(`(d) ${node.id} still holds in doubt ${doubt.map((t) => `${t.txnId} (${t.status}, coordinator ${t.coordinator})`).join(', ')}`);
    const unapplied = p.unapplied();
    if (unapplied.length > 0) throw new Violation(`(d) ${node.id} has final commits not applied: ${unapplied.map((t) => t.txnId).join(', ')}`);
    for (const repoId of REPOS) {
      const holder = p.lockedBy(repoId);
      if (holder !== undefined && !blockedByDeadAcceptor(holder)) throw new Violation(`(d) ${node.id} still has ${repoId} locked by ${holder}`);
    }
  }
  // Every push some node logged as committed, by repo and version: a later one may supersede an acked ref.
  const committedPushes: { op: Extract<TxnOp, { kind: 'push' }>; epoch: number; generation: number }[] = [];
  for (const node of sim.nodes.values()) {
    const ops = new Map<string, TxnOp>();
    for (const e of node.disk.log) {
      if (e.t === 'prepared' || e.t === 'decision') ops.set(e.txnId, e.op);
      if (e.t === 'committed') {
        const op = ops.get(e.txnId);
        if (op?.kind === 'push') committedPushes.push({ op, epoch: e.epoch, generation: e.generation ?? 0 });
      }
    }
  }
  const heldBlocked = (node: SimNode, repoId: string): boolean => {
    const holder = node.participant.lockedBy(repoId);
    return holder !== undefined && blockedByDeadAcceptor(holder);
  };
  for (const a of acked) {
    for (const node of live) {
      // A repo held somewhere by a transaction whose dead acceptor decides cannot converge: a held
      // replica cannot catch up, nor serve a catch-up; the acknowledged push is on W nodes even so.
      if (live.some((x) => heldBlocked(x, a.op.repoId))) continue;
      const state = node.participant.repo(a.op.repoId);
      if (a.op.kind === 'create' || a.op.kind === 'delete') {
        if (!state || state.epoch < a.epoch) throw new Violation(`(a) acknowledged ${a.op.kind} ${a.txnId} of ${a.op.repoId} at epoch ${a.epoch} missing on ${node.id} (${JSON.stringify(state)})`);
        continue;
      }
      if (!state || state.epoch > a.epoch) continue; // deleted (or re-created) since: superseded
      if (compareVersions(state, a) < 0) throw new Violation(`(a) acknowledged push ${a.txnId} (${a.epoch}.${a.generation}) lost on ${node.id}: at ${state.epoch}.${state.generation}`);
      const refs = node.disk.repos.get(a.op.repoId) ?? {};
      const updates = a.op.kind === 'push' ? a.op.updates : [];
      for (const u of updates) {
        const later = committedPushes.some((c) => c.op.repoId === a.op.repoId && c.epoch === a.epoch && c.generation > a.generation && c.op.updates.some((x) => x.ref === u.ref));
        if (!later && (refs[u.ref] ?? ZERO_OID) !== u.new) {
          throw new Violation(`(a) acknowledged push ${a.txnId} (${a.epoch}.${a.generation}) lost on ${node.id}: ${u.ref} is ${refs[u.ref] ?? 'absent'}, pushed ${u.new}`);
        }
      }
    }
  }
  for (const d of ackedDeletes) {
    for (const node of live) {
      // A replica held by a transaction whose dead acceptor decides cannot adopt the delete (as above);
      // reads do not serve it as current (its peers are at the delete's epoch).
      if (heldBlocked(node, d.op.repoId)) continue;
      const state = node.participant.repo(d.op.repoId);
      if (state?.state === 'live' && state.epoch <= d.epoch) throw new Violation(`(c) ${d.op.repoId} deleted at epoch ${d.epoch} (${d.txnId}) is live on ${node.id} at epoch ${state.epoch}`);
      if (state?.state !== 'live' && node.disk.repos.has(d.op.repoId)) throw new Violation(`(c) ${d.op.repoId} deleted but still on ${node.id}'s disk`);
    }
  }
  // After healing, every replica agrees, but for a repo a transaction blocked by a dead acceptor holds.
  for (const repoId of REPOS) {
    if (live.some((x) => { const holder = x.participant.lockedBy(repoId); return holder !== undefined && blockedByDeadAcceptor(holder); })) {
      report.blocked.push(repoId);
      continue;
    }
    const states = new Set(live.map((x) => `${JSON.stringify(x.participant.repo(repoId) ?? null)} ${JSON.stringify(Object.entries(x.disk.repos.get(repoId) ?? {}).sort())}`));
    if (states.size > 1) throw new Violation(`(a) replicas of ${repoId} did not converge: ${[...states].join(' | ')}`);
  }
  void quorum;
}
