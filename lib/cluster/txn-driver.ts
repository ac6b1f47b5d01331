import type { Clock } from '../base/clock.js';
import type { Logger } from '../base/logger.js';
import type { PeerClient } from './peer-client.js';
import type { ReplicaStore } from '../storage/replica.js';
import type { TxnLog } from '../storage/txn-log.js';
import { failpointAction, failpointsSet, hit, type FailpointName } from '../base/failpoints.js';
import {
  CoordinatorTxn,
  ZERO_OID,
  compareVersions,
  deathDeclarationProblem,
  Participant,
  type Recovery,
  type CatalogEntry,
  type CoordinatorEffect,
  type CoordinatorResult,
  type NodeId,
  type ParticipantEffect,
  type RecoveryAnswer,
  type RecoveryStep,
  type QueryAnswer,
  type RepoVersion,
  type TxnMessage,
  type TxnOp,
  type Vote,
} from '../core/txn-core.js';

// Carries out what the pure protocol core (txn-core.ts) decides. Effects run in the order the core
// returns them, persist before send before reply. Every effect goes through an injected interface:
// the log (TxnLog), the replica's disk side (ReplicaStore, lib/storage/replica.ts), the peers (Transport,
// PeerClient) and the clock; the seeded simulation (spec/unit/sim.ts) runs this very driver over
// in-memory fakes of each.

export interface TxnTimeouts {
  prepareTimeoutMs: number;
  commitTimeoutMs: number;
  commitResends: number;
}

/** What the driver needs of its transaction log. */
export type DriverLog = Pick<TxnLog, 'replay' | 'open' | 'append'>;

/** What the driver needs of the network: the protocol messages to peers (PeerClient is the real one). */
export type Transport = Pick<PeerClient, 'sendTxn' | 'queryTxn' | 'catalog'>;

export interface TxnDriverOptions {
  self: NodeId;
  peers: readonly NodeId[];
  quorum: number;
  log: DriverLog;
  replica: ReplicaStore;
  transport: Transport;
  logger: Logger;
  clock: Clock;
  newTxnId: () => string;
  timeouts: TxnTimeouts;
  /** The protocol core this driver carries out (default a new one; the simulation passes a variant). */
  participant?: Participant;
  /** The coordinator's state machine (default CoordinatorTxn; the simulation passes a variant). */
  coordinatorTxn?: typeof CoordinatorTxn;
  /**
   * Told the duration of each phase of a transaction this node coordinates: `prepare` (start to the
   * logged decision) and `commit` (decision to the answer the client hears). For metrics.
   */
  observePhase?: (kind: TxnOp['kind'], phase: 'prepare' | 'commit', ms: number) => void;
  /** Told after this replica's refs of a repo moved (a push applied, a catch-up): housekeeping. */
  afterWrite?: (repoId: string) => void;
}

/** Runs a named failpoint (FAILPOINTS) if one is set for this point; a map lookup when none is. */
async function failpoint(clock: Clock, op: TxnOp, role: 'coordinator' | 'participant', point: string): Promise<void> {
  if (!failpointsSet()) return;
  const name = `${op.kind}.${role}.${point}` as FailpointName;
  if (failpointAction(name)) await hit(name, clock);
}

interface ActiveTxn {
  coord: CoordinatorTxn;
  /** A commit message went to a peer and was answered (the `after-first-commit` failpoint). */
  firstCommitDone?: boolean;
  /** When the transaction started, and when its decision was logged (clock time), for observePhase. */
  startedAt: number;
  decidedAt?: number;
  requestId: string;
  /** This transaction's prepare timeout (the configured one, plus a large push's allowance). */
  prepareTimeoutMs: number;
  timers: Map<string, unknown>;
  resolve: (result: CoordinatorResult) => void;
  beforePrepare?: (to: NodeId) => Promise<InlineFiles | void>;
}

/** Small files (a push's pack) sent inside a prepare instead of ahead of it: name → base64. */
export type InlineFiles = Record<string, string>;

export interface RunTxnOptions {
  txnId?: string;
  /**
   * Runs before the prepare goes to a peer (a push ships its pack, or returns it to travel inside
   * the prepare); a failure counts as that peer's no.
   */
  beforePrepare?: (to: NodeId) => Promise<InlineFiles | void>;
  /**
   * A push: this replica's commit waits for it. True once receive-pack has moved the pushed objects
   * into the repo (its proc-receive hook asks for the refs): the ref transaction prepared with the
   * vote may then be committed. False when receive-pack exited without that: either it moved the
   * refs itself (a push of few refs; nothing is held here) or it died before its objects left
   * quarantine; any prepared transaction is dropped and the push applied afresh (git checks the
   * objects, and leaves refs already at their new values alone).
   */
  selfCommitGate?: Promise<boolean>;
  /** A push whose receive-pack hands its refs to the node: the object directory of its quarantine ('' for none), where this replica finds the objects to prepare its refs with. */
  quarantine?: string;
  /**
   * Time added to the prepare timeout for this transaction: a push whose pack is shipped to every
   * peer inside the prepare's window (its upload runs in `beforePrepare`) gets time in proportion.
   */
  extraPrepareMs?: number;
}

export class TxnDriver {
  readonly participant: Participant;
  private readonly options: TxnDriverOptions;
  private readonly active = new Map<string, ActiveTxn>();
  /**
   * Each push this node coordinates, by txn id, until its own replica settled it: the gate its own
   * commit waits for and, for a receive-pack that hands its refs to the node, its quarantine
   * (RunTxnOptions.selfCommitGate, .quarantine).
   */
  private readonly ownPushes = new Map<string, { gate: Promise<boolean>; quarantine?: string }>();
  private readonly applying = new Map<string, Promise<Vote>>();
  /** Prepares being carried out, by txn id. */
  private readonly preparing = new Map<string, Promise<Vote>>();
  private readonly localSettled = new Map<string, { promise: Promise<boolean>; resolve: (applied: boolean) => void }>();
  /** File-system work on one repo runs one step at a time, in arrival order. */
  private readonly repoChains = new Map<string, Promise<void>>();
  /** A small pack that came inside a push's prepare, held in memory until the stage writes it. */
  private readonly inlinePacks = new Map<string, Readonly<Record<string, Buffer>>>();

  constructor(options: TxnDriverOptions) {
    this.options = options;
    this.participant = options.participant ?? new Participant();
  }

  /** Ends the git sessions this driver holds (a prepared push's ref locks are released by git). */
  close(): void {
    this.options.replica.close();
  }

  /** Undoes a push's or create's staging here: its ref transaction, then its files. */
  private async discardStaged(txnId: string): Promise<void> {
    this.inlinePacks.delete(txnId);
    await this.options.replica.discard(txnId);
  }

  get nodes(): NodeId[] {
    return [this.options.self, ...this.options.peers];
  }

  /** Replays the log, prepares the store, then tries once to settle transactions left in doubt. */
  async start(): Promise<void> {
    const entries = await this.options.log.replay();
    for (const entry of entries) this.participant.replay(entry);
    await this.options.log.open();
    const keep = new Set([...this.participant.inDoubt(), ...this.participant.unapplied()].map((t) => t.txnId));
    const cleared = await this.options.replica.init(keep);
    if (cleared.length > 0) this.options.logger.warn('removed what dead gits left (lock files, quarantines)', { paths: cleared });
    // Make the served tree agree with the catalog: a crash between an fs step and its log line
    // leaves a difference only in the direction the log already records as decided.
    for (const [repoId, entry] of Object.entries(this.participant.catalog())) {
      if (this.participant.lockedBy(repoId)) continue;
      const present = await this.options.replica.exists(repoId);
      if (entry.state === 'live' && !present) {
        // Its pushes are gone with it: an empty repo at generation 0, which catch-up then refills.
        await this.options.replica.recreate(repoId, 'repair');
        for (const effect of this.participant.onRepoLost(repoId)) await this.runParticipantEffect(effect);
        this.options.logger.warn('repo missing on disk; recreated empty and marked behind', { repo_id: repoId });
      }
      if (entry.state === 'deleted' && present) await this.options.replica.remove(repoId, 'repair');
    }
    // Final commits whose `applied` record is missing are applied again before anything is served: a
    // push is applied idempotently (refs already at the new values are left alone), a create finds its
    // repo renamed into place. Every other decided transaction is never applied twice.
    const unapplied = this.participant.unapplied();
    for (const txn of unapplied) await this.reapply(txn.txnId);
    this.options.logger.info('transaction log replayed', { entries: entries.length, in_doubt: this.participant.inDoubt().length, reapplied: unapplied.length });
  }

  /** Runs one create or delete as coordinator; resolves with the outcome the client should hear. */
  runTxn(op: TxnOp, requestId: string, options: RunTxnOptions = {}): Promise<CoordinatorResult> {
    const { self, quorum, timeouts, newTxnId } = this.options;
    // Nodes declared dead for good get no prepare: they are fenced, and W is counted among the rest.
    const nodes = this.nodes.filter((n) => !this.participant.isDead(n));
    const prepareTimeoutMs = timeouts.prepareTimeoutMs + (options.extraPrepareMs ?? 0);
    const coord = new (this.options.coordinatorTxn ?? CoordinatorTxn)({ txnId: options.txnId ?? newTxnId(), op, self, nodes, quorum, ...timeouts, prepareTimeoutMs });
    if (options.selfCommitGate) {
      this.ownPushes.set(coord.txnId, { gate: options.selfCommitGate, ...(options.quarantine === undefined ? {} : { quarantine: options.quarantine }) });
    }
    return new Promise((resolve) => {
      const txn: ActiveTxn = {
        coord,
        requestId,
        timers: new Map(),
        resolve,
        startedAt: this.options.clock.now(),
        prepareTimeoutMs,
        ...(options.beforePrepare ? { beforePrepare: options.beforePrepare } : {}),
      };
      this.active.set(coord.txnId, txn);
      this.options.logger.info('txn started', { txn_id: coord.txnId, request_id: requestId, op: op.kind, repo_id: op.repoId });
      failpoint(this.options.clock, op, 'coordinator', 'before-prepare').then(
        () => this.runCoordinatorEffects(txn, coord.start()),
        () => this.finish(txn, { outcome: 'aborted', code: 'quorum_unreachable', failed: [self] }),
      );
    });
  }

  private async runCoordinatorEffects(txn: ActiveTxn, effects: CoordinatorEffect[]): Promise<void> {
    const { coord } = txn;
    for (const effect of effects) {
      switch (effect.type) {
        case 'persist':
          try {
            if (effect.entry.t === 'decision') await failpoint(this.options.clock, coord.op, 'coordinator', 'after-votes');
            await this.options.log.append(effect.entry);
            if (effect.entry.t === 'decision') await failpoint(this.options.clock, coord.op, 'coordinator', 'after-decision');
          } catch (err) {
            // Without a durable decision nothing may be sent; the participants will ask and abort.
            this.options.logger.error('cannot log decision; txn left to presumed abort', { txn_id: coord.txnId, err });
            this.finish(txn, { outcome: 'aborted', code: 'quorum_unreachable', failed: [this.options.self] });
            return;
          }
          if (effect.entry.t === 'decision') {
            // The decision with the version it gives: a participant recovering through us derives nothing.
            this.participant.recordDecision(coord.txnId, effect.entry.outcome, effect.entry.epoch, effect.entry.generation, effect.entry.op, effect.entry.acceptors);
            this.options.logger.info('txn decided', { txn_id: coord.txnId, request_id: txn.requestId, outcome: effect.entry.outcome, epoch: effect.entry.epoch, generation: effect.entry.generation });
            txn.decidedAt = this.options.clock.now();
            this.options.observePhase?.(coord.op.kind, 'prepare', txn.decidedAt - txn.startedAt);
          }
          break;
        case 'send':
          void this.deliver(txn, effect.to, effect.msg);
          break;
        case 'setTimer': {
          const previous = txn.timers.get(effect.name);
          if (previous !== undefined) this.options.clock.clearTimeout(previous);
          txn.timers.set(
            effect.name,
            this.options.clock.setTimeout(() => void this.runCoordinatorEffects(txn, coord.onTimer(effect.name)), effect.ms),
          );
          break;
        }
        case 'reply':
          if (txn.decidedAt !== undefined) this.options.observePhase?.(coord.op.kind, 'commit', this.options.clock.now() - txn.decidedAt);
          txn.resolve(effect.result);
          break;
        case 'done':
          for (const handle of txn.timers.values()) this.options.clock.clearTimeout(handle);
          this.active.delete(coord.txnId);
          break;
      }
    }
  }

  private finish(txn: ActiveTxn, result: CoordinatorResult): void {
    for (const handle of txn.timers.values()) this.options.clock.clearTimeout(handle);
    this.active.delete(txn.coord.txnId);
    txn.resolve(result);
  }

  /** Sends one protocol message, to ourselves in-process or to a peer over HTTP, and feeds back the answer. */
  private async deliver(txn: ActiveTxn, to: NodeId, msg: TxnMessage): Promise<void> {
    const { coord } = txn;
    let vote: Vote;
    try {
      let inline: InlineFiles | void = undefined;
      if (msg.type === 'prepare' && to !== this.options.self && txn.beforePrepare) inline = await txn.beforePrepare(to);
      vote =
        to === this.options.self
          ? await this.handleMessage(msg)
          : // The coordinator decides by its prepare timer; the request itself waits a commit timeout
            // longer, so a peer that prepared too slowly to count still gets its yes heard and is told
            // the commit (a late voter) instead of holding the repo until its recovery asks.
            await this.options.transport.sendTxn(
              to,
              inline ? { ...msg, inlineFiles: inline } : msg,
              txn.requestId,
              msg.type === 'prepare' ? txn.prepareTimeoutMs + this.options.timeouts.commitTimeoutMs : undefined,
            );
    } catch (err) {
      this.options.logger.warn('peer did not answer', { txn_id: coord.txnId, peer: to, msg: msg.type, err: (err as Error).message });
      vote = { vote: 'no', code: 'unreachable' };
    }
    if (msg.type === 'prepare') await this.runCoordinatorEffects(txn, coord.onVote(to, vote));
    else if (msg.type === 'commitTxn') {
      if (to !== this.options.self && !txn.firstCommitDone) {
        txn.firstCommitDone = true;
        await failpoint(this.options.clock, coord.op, 'coordinator', 'after-first-commit');
      }
      await this.runCoordinatorEffects(txn, coord.onCommitReply(to, vote, msg.final ?? true));
    }
  }

  /**
   * A protocol message for this node as participant (from a peer, or from ourselves as coordinator).
   * `packFiles`: a push's small pack that came inside its prepare (a large one was streamed ahead).
   */
  async handleMessage(msg: TxnMessage, packFiles?: Readonly<Record<string, Buffer>>): Promise<Vote> {
    if (msg.type === 'prepare') {
      // A duplicate of a prepare still being staged gets that prepare's vote, not "busy": a "no" here
      // could count as this node's vote while the first copy leaves it prepared.
      const inFlight = this.preparing.get(msg.txnId);
      if (inFlight) return inFlight;
      const vote = this.handleOne(msg, packFiles);
      this.preparing.set(msg.txnId, vote);
      try {
        return await vote;
      } finally {
        this.preparing.delete(msg.txnId);
      }
    }
    return this.handleOne(msg, packFiles);
  }

  private async handleOne(msg: TxnMessage, packFiles?: Readonly<Record<string, Buffer>>): Promise<Vote> {
    switch (msg.type) {
      case 'prepare': {
        if (packFiles && !this.participant.status(msg.txnId)) this.inlinePacks.set(msg.txnId, packFiles);
        try {
          const vote = await this.prepare(msg);
          if (vote.vote === 'yes') await failpoint(this.options.clock, msg.op, 'participant', 'after-prepare');
          return vote;
        } finally {
          this.inlinePacks.delete(msg.txnId);
        }
      }
      case 'commitTxn':
        return this.commitLocally(msg.txnId, msg.epoch, msg.generation, msg.final ?? true, msg.acceptors);
      case 'abortTxn':
        return this.runParticipantEffects(this.participant.onAbort(msg.txnId), msg.txnId);
    }
  }

  /**
   * A prepare, step by step as the core plans it: wait for the commit still being applied to the repo,
   * read the refs the core needs (in the repo's queue, so a commit being applied is seen whole), judge,
   * stage, log; after each step the core says what follows (an abort may have overtaken the staging).
   */
  private async prepare(msg: Extract<TxnMessage, { type: 'prepare' }>): Promise<Vote> {
    const { txnId, op } = msg;
    const plan = this.participant.planPrepare(msg);
    if (plan.waitForApply !== undefined) await this.applying.get(plan.waitForApply);
    let effects: ParticipantEffect[] = [];
    await this.withRepo(op.repoId, async () => {
      const refs = plan.readRefs === 'none' ? undefined : await this.options.replica.readRefs(op.repoId, plan.readRefs === 'all' ? undefined : plan.readRefs);
      effects = this.participant.onPrepare(msg, refs);
    });
    const stage = effects.find((e) => e.type === 'stage');
    if (!stage) return this.runParticipantEffects(effects, txnId);
    for (const next of [() => [stage], () => this.participant.onStaged(txnId)]) {
      const step = next();
      try {
        for (const effect of step) if (effect.type !== 'reply') await this.runParticipantEffect(effect);
      } catch (err) {
        this.options.logger.error('participant step failed', { txn_id: txnId, step: step[0]?.type, err: (err as Error).message });
        return this.runParticipantEffects(this.participant.onPrepareFailed(txnId), txnId);
      }
      const reply = step.find((e) => e.type === 'reply');
      if (reply) return reply.vote;
    }
    return this.runParticipantEffects(this.participant.onPrepared(txnId, this.options.clock.now()), txnId);
  }

  /**
   * Applies a commit here. A second commit for the same transaction (a re-send, or recovery racing the
   * coordinator's own message) waits for the apply in flight and gets its answer.
   */
  private async commitLocally(txnId: string, epoch: number, generation: number, final: boolean, acceptors?: NodeId[]): Promise<Vote> {
    const inFlight = this.applying.get(txnId);
    if (inFlight) return inFlight;
    const op = this.participant.opOf(txnId);
    const status = this.participant.status(txnId);
    if (op && final && (status === 'prepared' || status === 'accepted')) await failpoint(this.options.clock, op, 'participant', 'before-apply');
    const effects = this.participant.onCommit(txnId, epoch, generation, final, acceptors);
    for (const e of effects) {
      if (e.type === 'reply' && e.vote.vote === 'no' && e.vote.code === 'stale') {
        this.options.logger.error('refused a commit whose version does not follow this replica', { txn_id: txnId, epoch, generation, detail: e.vote.detail });
      }
    }
    const vote = await this.trackApply(txnId, effects);
    if (op && effects.some((e) => e.type === 'apply') && vote.vote === 'yes') await failpoint(this.options.clock, op, 'participant', 'after-apply');
    return vote;
  }

  /** Runs a commit's effects as the one apply in flight for the transaction (see `applying`). */
  private async trackApply(txnId: string, effects: ParticipantEffect[]): Promise<Vote> {
    const applied = this.runParticipantEffects(effects, txnId);
    this.applying.set(txnId, applied);
    try {
      return await applied;
    } finally {
      this.applying.delete(txnId);
    }
  }

  private async runParticipantEffects(effects: ParticipantEffect[], txnId: string): Promise<Vote> {
    let vote: Vote = { vote: 'no', code: 'refused' };
    const settles = effects.some((e) => e.type === 'apply' || e.type === 'discard');
    for (const effect of effects) {
      try {
        await this.runParticipantEffect(effect);
      } catch (err) {
        this.options.logger.error('participant step failed', { txn_id: txnId, step: effect.type, err: (err as Error).message });
        // A failed apply is not an acknowledgement; see Participant.onApplyFailed for what it leaves.
        if (effect.type === 'apply') {
          this.participant.onApplyFailed(txnId);
          this.settle(txnId, false);
        }
        return { vote: 'no', code: 'stage_failed' };
      }
      if (effect.type === 'reply') vote = effect.vote;
    }
    if (effects.some((e) => e.type === 'apply')) {
      // The `applied` record may land lazily: without it a restart applies the push again, idempotently.
      for (const effect of this.participant.onCommitted(txnId)) {
        if (effect.type === 'persist') this.options.log.append(effect.entry).catch((err) => this.options.logger.warn('cannot log applied', { txn_id: txnId, err: (err as Error).message }));
      }
    }
    if (settles) this.settle(txnId, effects.some((e) => e.type === 'apply'));
    return vote;
  }

  private async runParticipantEffect(effect: ParticipantEffect): Promise<void> {
    const { replica: store, log } = this.options;
    switch (effect.type) {
      case 'stage':
        if (effect.op.kind === 'create') await store.stageCreate(effect.txnId);
        // A push's refs are locked in git until the decision. A peer's objects came inside the prepare
        // or were streamed ahead of it. The coordinator's own are in receive-pack's quarantine: for a
        // push of many refs, receive-pack's proc-receive hook later asks for the commit, once they
        // are in the repo; a push of few refs, receive-pack moves itself after the hook (here only
        // checked for stale locks).
        if (effect.op.kind === 'push') {
          if (effect.coordinator === this.options.self) {
            const quarantine = this.ownPushes.get(effect.txnId)?.quarantine;
            await store.stagePush(effect.txnId, effect.op.repoId, effect.op.updates, { own: true, ...(quarantine === undefined ? {} : { quarantine }) });
          } else {
            const inline = this.inlinePacks.get(effect.txnId);
            await store.stagePush(effect.txnId, effect.op.repoId, effect.op.updates, { own: false, ...(inline ? { inline } : {}) });
          }
        }
        return;
      case 'apply': {
        const { op, txnId } = effect;
        if (op.kind === 'push') {
          const gate = this.ownPushes.get(txnId)?.gate;
          const prepared = gate ? await gate : true;
          await this.withRepo(op.repoId, () => store.applyPush(txnId, op.repoId, op.updates, op.head, prepared));
          this.options.afterWrite?.(op.repoId);
          return;
        }
        // A settings change lives in the catalog only (the core sets it once applied): nothing on disk.
        if (op.kind === 'settings') return;
        await this.withRepo(op.repoId, () => (op.kind === 'create' ? store.commitCreate(txnId, op.repoId) : store.remove(op.repoId, txnId)));
        return;
      }
      case 'discard':
        await this.discardStaged(effect.txnId);
        return;
      case 'sync':
        await this.withRepo(effect.repoId, () =>
          effect.to.state === 'live' ? store.recreate(effect.repoId, 'sync') : store.remove(effect.repoId, 'sync'),
        );
        return;
      case 'persist':
        await log.append(effect.entry);
        return;
      case 'reply':
        return;
    }
  }

  /** Drops shipped packs whose upload was abandoned (see RepoStore.sweepIncoming); returns how many. */
  async sweepIncoming(idleMs: number): Promise<number> {
    const active = (txnId: string): boolean => {
      const status = this.participant.status(txnId);
      return status === 'preparing' || status === 'prepared' || status === 'committing' || this.applying.has(txnId);
    };
    const removed = await this.options.replica.sweepIncoming(active, idleMs, this.options.clock.now());
    if (removed.length > 0) this.options.logger.info('dropped abandoned pack uploads', { txn_ids: removed });
    return removed.length;
  }

  /** Catch-up made our refs equal a peer's at `version`: take that version (logged first). */
  async caughtUp(repoId: string, version: RepoVersion): Promise<boolean> {
    const effects = this.participant.onCaughtUp(repoId, version);
    for (const effect of effects) await this.runParticipantEffect(effect);
    this.options.afterWrite?.(repoId);
    return effects.length > 0;
  }

  /** Resolves once this node's own replica has applied (true) or discarded or failed to apply (false) the transaction. */
  localOutcome(txnId: string): Promise<boolean> {
    let entry = this.localSettled.get(txnId);
    if (!entry) {
      let resolve!: (applied: boolean) => void;
      const promise = new Promise<boolean>((r) => (resolve = r));
      entry = { promise, resolve };
      this.localSettled.set(txnId, entry);
    }
    return entry.promise;
  }

  forgetOutcome(txnId: string): void {
    this.localSettled.delete(txnId);
    this.ownPushes.delete(txnId);
  }

  /**
   * How long a prepared transaction is left to its coordinator before this node asks about it. Asking
   * is harmless while the coordinator answers (it says "pending"); only when it does not are the other
   * nodes asked to refuse. One prepare timeout: by then a live coordinator has decided.
   */
  private get inDoubtGraceMs(): number {
    return this.options.timeouts.prepareTimeoutMs;
  }

  /** Waits (bounded) until a final commit being applied to this replica of the repo is applied. */
  async waitApplied(repoId: string, timeoutMs: number): Promise<boolean> {
    const txnId = this.participant.applying(repoId);
    if (txnId === undefined) return true;
    const inFlight = this.applying.get(txnId);
    if (!inFlight) return false;
    let timer: unknown;
    const timedOut = new Promise<boolean>((resolve) => (timer = this.options.clock.setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([inFlight.then(() => true, () => true), timedOut]);
    } finally {
      this.options.clock.clearTimeout(timer);
    }
  }

  private settle(txnId: string, applied: boolean): void {
    this.ownPushes.delete(txnId);
    const entry = this.localSettled.get(txnId);
    if (entry) {
      entry.resolve(applied);
      this.localSettled.delete(txnId);
    }
  }

  /** Like withRepo, for a step that returns a value. */
  async withRepoResult<T>(repoId: string, fn: () => Promise<T>): Promise<T> {
    let result!: T;
    await this.withRepo(repoId, async () => {
      result = await fn();
    });
    return result;
  }

  withRepo(repoId: string, fn: () => Promise<void>): Promise<void> {
    const previous = this.repoChains.get(repoId) ?? Promise.resolve();
    const next = previous.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.repoChains.set(repoId, tail);
    void tail.then(() => {
      if (this.repoChains.get(repoId) === tail) this.repoChains.delete(repoId);
    });
    return next;
  }

  /**
   * Answers another node's question about a transaction (recovery). With `repoId`, the answer says
   * what this node holds of that repo, read once the answer's own effects (a refusal) are done.
   */
  async handleQuery(txnId: string, refuse: boolean, asCoordinator: boolean, repoId?: string): Promise<Omit<QueryAnswer, 'effects'>> {
    const answer = asCoordinator
      ? this.participant.onCoordinatorQuery(txnId, this.active.has(txnId))
      : this.participant.onQuery(txnId, refuse);
    for (const effect of answer.effects) await this.runParticipantEffect(effect);
    const { effects: _effects, ...rest } = answer;
    return repoId === undefined ? rest : { ...rest, repo: this.participant.repoFacts(repoId, txnId) };
  }

  /**
   * Settles what this node holds undecided: final commits not yet applied here are applied (again,
   * idempotently), and every transaction left prepared or accepted is asked about, first of its
   * coordinator and, if that one cannot say, of every node (which then refuses it for good unless it
   * accepted a commit). See `resolveInDoubt` for what the answers prove.
   */
  async resolveInDoubtOnce(): Promise<number> {
    let settled = 0;
    for (const txn of this.participant.unapplied()) {
      if (this.applying.has(txn.txnId) || this.active.has(txn.txnId)) continue;
      // A push of our own coordinating waits for its receive-pack; any other is applied here.
      if (this.ownPushes.has(txn.txnId)) continue;
      const vote = await this.reapply(txn.txnId);
      if (vote.vote === 'yes') settled += 1;
    }
    const cluster = { self: this.options.self, nodes: this.nodes, quorum: this.options.quorum };
    for (const { txnId, op } of this.participant.unsettledDecisions()) {
      if (this.active.has(txnId)) continue;
      const recovery = this.participant.recovery({ txnId, op, coordinator: this.options.self, ownDecision: true }, cluster);
      const step = await this.converse(recovery);
      if (step.type === 'wait') continue;
      this.options.logger.info('own decision settled', { txn_id: txnId, ...recovery.gathered, verdict: step.type });
      for (const effect of this.participant.onDecisionSettled(txnId, step.type)) await this.runParticipantEffect(effect);
      if (step.type === 'abort') this.tellAbort(txnId);
      settled += 1;
    }
    for (const txn of this.participant.inDoubtDue(this.options.clock.now(), this.inDoubtGraceMs)) {
      if (this.active.has(txn.txnId)) continue;
      const recovery = this.participant.recovery(txn, cluster);
      const step = await this.converse(recovery);
      if (step.type !== 'wait' || recovery.gathered.coordinator !== 'pending') {
        this.options.logger.info('in-doubt txn', { txn_id: txn.txnId, ...recovery.gathered, verdict: step.type });
      }
      if (step.type === 'commit') {
        await this.commitLocally(txn.txnId, step.version.epoch, step.version.generation, true);
        settled += 1;
      } else if (step.type === 'abort') {
        await this.runParticipantEffects(this.participant.onRecoveredAbort(txn.txnId), txn.txnId);
        this.tellAbort(txn.txnId);
        settled += 1;
      }
    }
    return settled;
  }

  /** The peers not declared dead for good (those are fenced: nothing is sent to them). */
  livePeers(): NodeId[] {
    return this.options.peers.filter((p) => !this.participant.isDead(p));
  }

  /**
   * The operator declares `node` dead for good, or readmits it (`dead: false`) once it runs on an empty
   * data dir. Returns why it may not be declared, or undefined once the change is logged here.
   */
  async setMembership(node: NodeId, dead: boolean): Promise<string | undefined> {
    const cluster = { self: this.options.self, nodes: this.nodes, quorum: this.options.quorum };
    const problem = dead ? deathDeclarationProblem(node, cluster, this.participant.deadNodes()) : this.nodes.includes(node) ? undefined : `${node} is not a node of this cluster`;
    if (problem !== undefined) return problem;
    for (const effect of this.participant.onMembership(node, dead)) await this.runParticipantEffect(effect);
    this.options.logger.warn(dead ? 'node declared dead for good' : 'node readmitted', { node });
    return undefined;
  }

  /** Carries out a recovery's questions, in the order it asks them, until it concludes. */
  private async converse(recovery: Recovery): Promise<Exclude<RecoveryStep, { type: 'ask' }>> {
    for (let step = recovery.next(); ; step = recovery.next()) {
      if (step.type !== 'ask') return step;
      let answer: RecoveryAnswer;
      try {
        answer =
          step.node === this.options.self
            ? await this.handleQuery(recovery.txnId, step.refuse, step.asCoordinator, recovery.repoId)
            : await this.options.transport.queryTxn(step.node, recovery.txnId, { refuse: step.refuse, asCoordinator: step.asCoordinator, repoId: recovery.repoId });
      } catch {
        answer = 'unreachable';
      }
      recovery.onAnswer(answer);
    }
  }

  /** A proven abort is told to every peer (best effort): a refusing node then records it as final. */
  private tellAbort(txnId: string): void {
    for (const peer of this.livePeers()) {
      this.options.transport.sendTxn(peer, { type: 'abortTxn', txnId }, txnId).catch(() => undefined);
    }
  }

  /** Applies again a final commit whose apply did not finish (a restart, a failure). */
  private async reapply(txnId: string): Promise<Vote> {
    return this.applying.get(txnId) ?? this.trackApply(txnId, this.participant.onReapply(txnId));
  }

  /**
   * Anti-entropy: adopt newer repo states from reachable peers (missed creates and deletes). Returns
   * the repos where a peer holds a newer generation of the same incarnation: they need a catch-up.
   */
  async syncOnce(): Promise<string[]> {
    const newest = new Map<string, CatalogEntry>();
    const newestSettings = new Map<string, CatalogEntry>();
    for (const peer of this.livePeers()) {
      let catalog: Record<string, CatalogEntry>;
      try {
        catalog = await this.options.transport.catalog(peer);
      } catch {
        continue;
      }
      for (const [repoId, entry] of Object.entries(catalog)) {
        const best = newest.get(repoId);
        if (best === undefined || compareVersions({ epoch: entry.epoch, generation: entry.generation ?? 0 }, best) > 0) {
          newest.set(repoId, { ...entry, generation: entry.generation ?? 0 });
        }
        // Settings are versioned apart from refs: the newest settings of an incarnation may come from
        // a peer whose refs are older.
        const settled = newestSettings.get(repoId);
        if (entry.settings !== undefined && (settled === undefined || entry.epoch > settled.epoch || (entry.epoch === settled.epoch && (entry.settingsVersion ?? 0) > (settled.settingsVersion ?? 0)))) {
          newestSettings.set(repoId, entry);
        }
      }
    }
    for (const [repoId, entry] of newest) {
      const settled = newestSettings.get(repoId);
      if (settled !== undefined && settled.epoch === entry.epoch) newest.set(repoId, { ...entry, settings: settled.settings!, settingsVersion: settled.settingsVersion ?? 0 });
    }
    const behind: string[] = [];
    for (const [repoId, entry] of newest) {
      const effects = this.participant.onPeerState(repoId, entry);
      for (const effect of effects) await this.runParticipantEffect(effect);
      if (effects.length > 0) this.options.logger.info('adopted peer state', { repo_id: repoId, state: entry.state, epoch: entry.epoch, settings_version: entry.settingsVersion ?? 0 });
      const ours = this.participant.repo(repoId);
      if (entry.state === 'live' && ours?.state === 'live' && ours.epoch === entry.epoch && entry.generation > ours.generation) behind.push(repoId);
    }
    return behind;
  }
}
