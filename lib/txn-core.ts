// The two-phase commit protocol for repository create and delete, as pure state machines.
//
// Nothing here touches the disk, the network, a clock or randomness. Each entry point takes a message
// (or a timer firing) and returns the effects to carry out, in order: the driver (txn-driver.ts)
// performs `persist` before any `send` that follows it and `reply` last, which is what makes a vote or
// a decision durable before anyone hears of it. Specs drive these machines with a fake transport and a
// manual clock (spec/unit/txn-core.spec.ts).
//
// Rules, in one place:
// - Prepare: a participant refuses when the repo is locked by another transaction, when a create
//   finds it live or a delete finds it absent. Otherwise it locks the repo, stages the change out of
//   sight, logs `prepared` (fsync) and votes yes with its current epoch for the repo.
// - The coordinator decides commit once W nodes (itself included) voted yes, abort as soon as W can
//   no longer be reached or the prepare timer fires. It logs the decision before sending it.
// - A committed change gets epoch = 1 + the highest epoch among the yes votes. Any two quorums meet,
//   so epochs of committed changes to one repo strictly increase; anti-entropy applies a peer's state
//   only when its epoch is higher than ours.
// - Recovery: a participant holding `prepared` asks the coordinator, which answers from its decision
//   log and, with no record and no transaction in flight, logs abort and says so (presumed abort).
//   Peers that never prepared the transaction promise never to (`refused`); once N - W + 1 nodes have
//   refused it, no quorum can have voted yes and abort is safe even without the coordinator.

import { voteResult } from './quorum.js';

export type NodeId = string;
export type TxnOpKind = 'create' | 'delete';
export interface TxnOp {
  kind: TxnOpKind;
  repoId: string;
}

export type NoVoteCode = 'repo_exists' | 'repo_not_found' | 'repo_busy' | 'refused' | 'unreachable' | 'stage_failed';
export type Vote = { vote: 'yes'; epoch: number } | { vote: 'no'; code: NoVoteCode };

export type TxnMessage =
  | { type: 'prepare'; txnId: string; op: TxnOp; coordinator: NodeId }
  | { type: 'commitTxn'; txnId: string; epoch: number }
  | { type: 'abortTxn'; txnId: string };

export type LogEntry =
  | { t: 'prepared'; txnId: string; op: TxnOp; coordinator: NodeId }
  | { t: 'committed'; txnId: string; epoch: number }
  | { t: 'aborted'; txnId: string }
  | { t: 'refused'; txnId: string }
  | { t: 'decision'; txnId: string; outcome: 'commit' | 'abort'; op: TxnOp; epoch?: number }
  | { t: 'synced'; repoId: string; state: RepoState; epoch: number };

export type RepoState = 'live' | 'deleted';
export interface CatalogEntry {
  state: RepoState;
  epoch: number;
}

export type CoordinatorResult =
  | { outcome: 'committed'; epoch: number; confirmed: NodeId[]; yes: NodeId[] }
  | { outcome: 'aborted'; code: 'repo_exists' | 'repo_not_found' | 'repo_busy' | 'quorum_unreachable'; failed: NodeId[] };

export type CoordinatorTimer = 'prepare' | 'commit';

export type CoordinatorEffect =
  | { type: 'persist'; entry: LogEntry }
  | { type: 'send'; to: NodeId; msg: TxnMessage }
  | { type: 'setTimer'; name: CoordinatorTimer; ms: number }
  | { type: 'reply'; result: CoordinatorResult }
  | { type: 'done' };

export interface CoordinatorOptions {
  txnId: string;
  op: TxnOp;
  self: NodeId;
  nodes: readonly NodeId[];
  quorum: number;
  prepareTimeoutMs: number;
  commitTimeoutMs: number;
  /** Times the coordinator re-sends commit to a yes voter that has not acknowledged it. */
  commitResends: number;
}

export class CoordinatorTxn {
  readonly txnId: string;
  readonly op: TxnOp;
  private readonly options: CoordinatorOptions;
  private readonly votes = new Map<NodeId, Vote>();
  private readonly acks = new Set<NodeId>();
  private phase: 'idle' | 'collecting' | 'committing' | 'aborted' | 'done' = 'idle';
  private epoch = 0;
  private replied = false;
  private resendsLeft: number;

  constructor(options: CoordinatorOptions) {
    this.options = options;
    this.txnId = options.txnId;
    this.op = options.op;
    this.resendsLeft = options.commitResends;
  }

  get decided(): 'commit' | 'abort' | undefined {
    if (this.phase === 'committing' || (this.phase === 'done' && this.epoch > 0)) return 'commit';
    if (this.phase === 'aborted' || this.phase === 'done') return 'abort';
    return undefined;
  }

  start(): CoordinatorEffect[] {
    if (this.phase !== 'idle') return [];
    this.phase = 'collecting';
    const { txnId, op, self, nodes, prepareTimeoutMs } = this.options;
    return [
      ...nodes.map((to): CoordinatorEffect => ({ type: 'send', to, msg: { type: 'prepare', txnId, op, coordinator: self } })),
      { type: 'setTimer', name: 'prepare', ms: prepareTimeoutMs },
    ];
  }

  /** A node's vote. Only the first vote from each node counts; duplicates are ignored. */
  onVote(from: NodeId, vote: Vote): CoordinatorEffect[] {
    if (this.votes.has(from) || !this.options.nodes.includes(from)) return [];
    if (this.phase === 'committing') {
      // A yes that arrives after the decision still gets the commit, so the voter is not left in doubt.
      this.votes.set(from, vote);
      if (vote.vote === 'no') return this.maybeDone();
      return [{ type: 'send', to: from, msg: { type: 'commitTxn', txnId: this.txnId, epoch: this.epoch } }];
    }
    if (this.phase !== 'collecting') return [];
    this.votes.set(from, vote);
    const { yes, no } = this.tally();
    const result = voteResult(yes.length, no.length, this.options.nodes.length, this.options.quorum);
    if (result === 'won') return this.decideCommit(yes);
    if (result === 'lost') return this.decideAbort();
    return [];
  }

  onAck(from: NodeId): CoordinatorEffect[] {
    if (this.phase !== 'committing' || this.acks.has(from) || !this.yesVoters().includes(from)) return [];
    this.acks.add(from);
    const effects: CoordinatorEffect[] = [];
    // The client hears back once a quorum applied the change and so has the coordinator, if it voted
    // yes: a clone from the node that answered must find the repo.
    const { self } = this.options;
    const selfSettled = this.acks.has(self) || this.votes.get(self)?.vote === 'no';
    if (!this.replied && this.acks.size >= this.options.quorum && selfSettled) effects.push(this.replyCommitted());
    return [...effects, ...this.maybeDone()];
  }

  /** Done once every node has voted and every yes voter has acknowledged the commit. */
  private maybeDone(): CoordinatorEffect[] {
    if (this.phase !== 'committing' || this.votes.size < this.options.nodes.length || this.acks.size < this.yesVoters().length) return [];
    this.phase = 'done';
    const effects: CoordinatorEffect[] = this.replied ? [] : [this.replyCommitted()];
    return [...effects, { type: 'done' }];
  }

  onTimer(name: CoordinatorTimer): CoordinatorEffect[] {
    if (name === 'prepare' && this.phase === 'collecting') return this.decideAbort();
    if (name === 'commit' && this.phase === 'committing') {
      // The decision is durable; the change will reach every yes voter (they ask us if we stop
      // resending). Report what is confirmed so far rather than keep the client waiting.
      const effects: CoordinatorEffect[] = this.replied ? [] : [this.replyCommitted()];
      const pending = this.yesVoters().filter((n) => !this.acks.has(n));
      if (this.resendsLeft > 0 && pending.length > 0) {
        this.resendsLeft -= 1;
        for (const to of pending) effects.push({ type: 'send', to, msg: { type: 'commitTxn', txnId: this.txnId, epoch: this.epoch } });
        effects.push({ type: 'setTimer', name: 'commit', ms: this.options.commitTimeoutMs });
      } else {
        this.phase = 'done';
        effects.push({ type: 'done' });
      }
      return effects;
    }
    return [];
  }

  private tally(): { yes: NodeId[]; no: NodeId[] } {
    const yes: NodeId[] = [];
    const no: NodeId[] = [];
    for (const [node, vote] of this.votes) (vote.vote === 'yes' ? yes : no).push(node);
    return { yes, no };
  }

  private yesVoters(): NodeId[] {
    return this.tally().yes;
  }

  private decideCommit(yes: NodeId[]): CoordinatorEffect[] {
    this.phase = 'committing';
    let highest = 0;
    for (const node of yes) {
      const vote = this.votes.get(node);
      if (vote?.vote === 'yes') highest = Math.max(highest, vote.epoch);
    }
    this.epoch = highest + 1;
    const { txnId, op } = this;
    return [
      { type: 'persist', entry: { t: 'decision', txnId, outcome: 'commit', op, epoch: this.epoch } },
      ...yes.map((to): CoordinatorEffect => ({ type: 'send', to, msg: { type: 'commitTxn', txnId, epoch: this.epoch } })),
      { type: 'setTimer', name: 'commit', ms: this.options.commitTimeoutMs },
    ];
  }

  private decideAbort(): CoordinatorEffect[] {
    this.phase = 'aborted';
    const { txnId, op } = this;
    const effects: CoordinatorEffect[] = [{ type: 'persist', entry: { t: 'decision', txnId, outcome: 'abort', op } }];
    // Everyone that might have prepared hears the abort; a node we cannot reach asks us later.
    for (const to of this.options.nodes) {
      const vote = this.votes.get(to);
      if (vote === undefined || vote.vote === 'yes' || vote.code === 'unreachable') {
        effects.push({ type: 'send', to, msg: { type: 'abortTxn', txnId } });
      }
    }
    effects.push({ type: 'reply', result: this.abortResult() }, { type: 'done' });
    this.replied = true;
    return effects;
  }

  private abortResult(): CoordinatorResult {
    const failed: NodeId[] = [];
    let conflict: 'repo_exists' | 'repo_not_found' | 'repo_busy' | undefined;
    for (const node of this.options.nodes) {
      const vote = this.votes.get(node);
      if (vote === undefined || (vote.vote === 'no' && (vote.code === 'unreachable' || vote.code === 'stage_failed'))) {
        failed.push(node);
      } else if (vote.vote === 'no' && (vote.code === 'repo_exists' || vote.code === 'repo_not_found')) {
        conflict = vote.code;
      } else if (vote.vote === 'no' && conflict === undefined) {
        conflict = 'repo_busy';
      }
    }
    return { outcome: 'aborted', code: conflict ?? 'quorum_unreachable', failed };
  }

  private replyCommitted(): CoordinatorEffect {
    this.replied = true;
    return { type: 'reply', result: { outcome: 'committed', epoch: this.epoch, confirmed: [...this.acks], yes: this.yesVoters() } };
  }
}

// ---------------------------------------------------------------------------------------------
// Participant: every node, the coordinator included, is one.

export type TxnStatus = 'preparing' | 'prepared' | 'committed' | 'aborted' | 'refused';
interface TxnRecord {
  status: TxnStatus;
  op?: TxnOp;
  coordinator?: NodeId;
  epoch?: number;
}

export type ParticipantEffect =
  | { type: 'stage'; txnId: string; op: TxnOp }
  | { type: 'apply'; txnId: string; op: TxnOp; epoch: number }
  | { type: 'discard'; txnId: string; op: TxnOp }
  | { type: 'sync'; repoId: string; from: CatalogEntry | undefined; to: CatalogEntry }
  | { type: 'persist'; entry: LogEntry }
  | { type: 'reply'; vote: Vote };

export type QueryOutcome = 'committed' | 'aborted' | 'prepared' | 'refused' | 'pending';

export class Participant {
  private readonly repos = new Map<string, CatalogEntry>();
  private readonly locks = new Map<string, string>();
  private readonly txns = new Map<string, TxnRecord>();
  /** Decisions this node took as coordinator. */
  private readonly decisions = new Map<string, { outcome: 'commit' | 'abort'; epoch?: number }>();

  /** Rebuilds state from one log entry, in log order. */
  replay(entry: LogEntry): void {
    switch (entry.t) {
      case 'prepared':
        this.txns.set(entry.txnId, { status: 'prepared', op: entry.op, coordinator: entry.coordinator });
        this.locks.set(entry.op.repoId, entry.txnId);
        return;
      case 'committed': {
        const rec = this.txns.get(entry.txnId);
        if (rec?.op) {
          this.setRepo(rec.op, entry.epoch);
          this.unlock(rec.op.repoId, entry.txnId);
        }
        this.txns.set(entry.txnId, { ...rec, status: 'committed', epoch: entry.epoch });
        return;
      }
      case 'aborted':
      case 'refused': {
        const rec = this.txns.get(entry.txnId);
        if (rec?.op) this.unlock(rec.op.repoId, entry.txnId);
        this.txns.set(entry.txnId, { ...rec, status: entry.t });
        return;
      }
      case 'decision':
        this.decisions.set(entry.txnId, { outcome: entry.outcome, ...(entry.epoch === undefined ? {} : { epoch: entry.epoch }) });
        return;
      case 'synced':
        this.repos.set(entry.repoId, { state: entry.state, epoch: entry.epoch });
        return;
    }
  }

  repo(repoId: string): CatalogEntry | undefined {
    return this.repos.get(repoId);
  }

  isLive(repoId: string): boolean {
    return this.repos.get(repoId)?.state === 'live';
  }

  liveRepos(): string[] {
    return [...this.repos].filter(([, e]) => e.state === 'live').map(([id]) => id).sort();
  }

  catalog(): Record<string, CatalogEntry> {
    return Object.fromEntries(this.repos);
  }

  lockedBy(repoId: string): string | undefined {
    return this.locks.get(repoId);
  }

  /** Transactions this node prepared and has no outcome for: they hold their repo's lock. */
  inDoubt(): { txnId: string; op: TxnOp; coordinator: NodeId }[] {
    const out: { txnId: string; op: TxnOp; coordinator: NodeId }[] = [];
    for (const [txnId, rec] of this.txns) {
      if (rec.status === 'prepared' && rec.op && rec.coordinator) out.push({ txnId, op: rec.op, coordinator: rec.coordinator });
    }
    return out;
  }

  status(txnId: string): TxnStatus | undefined {
    return this.txns.get(txnId)?.status;
  }

  decision(txnId: string): { outcome: 'commit' | 'abort'; epoch?: number } | undefined {
    return this.decisions.get(txnId);
  }

  recordDecision(txnId: string, outcome: 'commit' | 'abort', epoch?: number): void {
    this.decisions.set(txnId, { outcome, ...(epoch === undefined ? {} : { epoch }) });
  }

  onPrepare(msg: Extract<TxnMessage, { type: 'prepare' }>): ParticipantEffect[] {
    const { txnId, op, coordinator } = msg;
    const known = this.txns.get(txnId);
    if (known) {
      // Duplicate prepare: repeat the durable answer, never a second staging.
      if (known.status === 'prepared') return [{ type: 'reply', vote: { vote: 'yes', epoch: this.epochOf(op.repoId) } }];
      if (known.status === 'committed' && known.epoch !== undefined) return [{ type: 'reply', vote: { vote: 'yes', epoch: known.epoch - 1 } }];
      return [{ type: 'reply', vote: { vote: 'no', code: known.status === 'preparing' ? 'repo_busy' : 'refused' } }];
    }
    const holder = this.locks.get(op.repoId);
    if (holder !== undefined) return [{ type: 'reply', vote: { vote: 'no', code: 'repo_busy' } }];
    const live = this.isLive(op.repoId);
    if (op.kind === 'create' && live) return [{ type: 'reply', vote: { vote: 'no', code: 'repo_exists' } }];
    if (op.kind === 'delete' && !live) return [{ type: 'reply', vote: { vote: 'no', code: 'repo_not_found' } }];
    this.locks.set(op.repoId, txnId);
    this.txns.set(txnId, { status: 'preparing', op, coordinator });
    return [
      { type: 'stage', txnId, op },
      { type: 'persist', entry: { t: 'prepared', txnId, op, coordinator } },
      { type: 'reply', vote: { vote: 'yes', epoch: this.epochOf(op.repoId) } },
    ];
  }

  /** The driver carried out the `stage` and `persist` of a prepare. */
  onPrepared(txnId: string): void {
    const rec = this.txns.get(txnId);
    if (rec?.status === 'preparing') rec.status = 'prepared';
  }

  /** Staging or logging failed: release the lock, undo what was staged, vote no. */
  onPrepareFailed(txnId: string): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (rec?.status !== 'preparing' || !rec.op) return [];
    this.txns.delete(txnId);
    this.unlock(rec.op.repoId, txnId);
    return [{ type: 'discard', txnId, op: rec.op }, { type: 'reply', vote: { vote: 'no', code: 'stage_failed' } }];
  }

  onCommit(txnId: string, epoch: number): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (!rec?.op) return [];
    if (rec.status === 'committed') return [{ type: 'reply', vote: { vote: 'yes', epoch } }];
    if (rec.status !== 'prepared') return [];
    rec.status = 'committed';
    rec.epoch = epoch;
    this.setRepo(rec.op, epoch);
    this.unlock(rec.op.repoId, txnId);
    return [
      { type: 'apply', txnId, op: rec.op, epoch },
      { type: 'persist', entry: { t: 'committed', txnId, epoch } },
      { type: 'reply', vote: { vote: 'yes', epoch } },
    ];
  }

  onAbort(txnId: string): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (!rec || rec.status === 'aborted' || rec.status === 'refused' || rec.status === 'committed') return [];
    if (rec.status === 'preparing') {
      // The abort overtook our own prepare; record it so the prepare's vote is never counted as yes.
      // The driver discards the staging once the prepare finishes.
    }
    rec.status = 'aborted';
    if (rec.op) this.unlock(rec.op.repoId, txnId);
    return [
      ...(rec.op ? [{ type: 'discard', txnId, op: rec.op } as const] : []),
      { type: 'persist', entry: { t: 'aborted', txnId } },
    ];
  }

  /**
   * Another node asks what we know of a transaction. With `refuse`, a transaction we never prepared
   * is refused for good (persisted before answering), so that refusals can prove an abort.
   */
  onQuery(txnId: string, refuse: boolean): { outcome: QueryOutcome; epoch?: number; effects: ParticipantEffect[] } {
    const decision = this.decisions.get(txnId);
    if (decision) return { outcome: decision.outcome === 'commit' ? 'committed' : 'aborted', ...(decision.epoch === undefined ? {} : { epoch: decision.epoch }), effects: [] };
    const rec = this.txns.get(txnId);
    if (rec) {
      if (rec.status === 'preparing') return { outcome: 'pending', effects: [] };
      return { outcome: rec.status, ...(rec.epoch === undefined ? {} : { epoch: rec.epoch }), effects: [] };
    }
    if (!refuse) return { outcome: 'pending', effects: [] };
    this.txns.set(txnId, { status: 'refused' });
    return { outcome: 'refused', effects: [{ type: 'persist', entry: { t: 'refused', txnId } }] };
  }

  /**
   * The question asked of the coordinator about its own transaction. With no decision logged and the
   * transaction no longer running here (we restarted, or gave up on it), it never committed: log the
   * abort first so the answer is final (presumed abort).
   */
  onCoordinatorQuery(txnId: string, stillRunning: boolean): { outcome: QueryOutcome; epoch?: number; effects: ParticipantEffect[] } {
    const decision = this.decisions.get(txnId);
    if (decision) return this.onQuery(txnId, false);
    if (stillRunning) return { outcome: 'pending', effects: [] };
    const op = this.txns.get(txnId)?.op ?? { kind: 'create', repoId: '' };
    this.decisions.set(txnId, { outcome: 'abort' });
    return { outcome: 'aborted', effects: [{ type: 'persist', entry: { t: 'decision', txnId, outcome: 'abort', op } }] };
  }

  /**
   * Anti-entropy: adopt a peer's state for a repo when its epoch is newer than ours and we are not in
   * the middle of a transaction on it.
   */
  onPeerState(repoId: string, theirs: CatalogEntry): ParticipantEffect[] {
    if (this.locks.has(repoId)) return [];
    const ours = this.repos.get(repoId);
    if (ours !== undefined && ours.epoch >= theirs.epoch) return [];
    this.repos.set(repoId, { ...theirs });
    return [
      { type: 'sync', repoId, from: ours, to: { ...theirs } },
      { type: 'persist', entry: { t: 'synced', repoId, state: theirs.state, epoch: theirs.epoch } },
    ];
  }

  private epochOf(repoId: string): number {
    return this.repos.get(repoId)?.epoch ?? 0;
  }

  private setRepo(op: TxnOp, epoch: number): void {
    const current = this.repos.get(op.repoId);
    if (current && current.epoch >= epoch) return;
    this.repos.set(op.repoId, { state: op.kind === 'create' ? 'live' : 'deleted', epoch });
  }

  private unlock(repoId: string, txnId: string): void {
    if (this.locks.get(repoId) === txnId) this.locks.delete(repoId);
  }
}

// ---------------------------------------------------------------------------------------------
// Recovery: what a participant holding `prepared` may conclude from the answers it gathered.

export type PeerAnswer = QueryOutcome | 'unreachable';

export function resolveInDoubt(
  answers: { coordinator: PeerAnswer; peers: PeerAnswer[] },
  clusterSize: number,
  quorum: number,
): 'commit' | 'abort' | 'wait' {
  const all = [answers.coordinator, ...answers.peers];
  if (all.includes('committed')) return 'commit';
  // Only a decision (the coordinator's log, or a participant that heard it) proves abort; a peer's
  // refusal only proves it never voted yes.
  if (answers.coordinator === 'aborted' || answers.peers.includes('aborted')) return 'abort';
  const refused = all.filter((a) => a === 'refused').length;
  if (refused >= clusterSize - quorum + 1) return 'abort';
  return 'wait';
}
