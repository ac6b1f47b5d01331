// The two-phase commit protocol for repository create, delete, push and settings, as pure state machines.
//
// Nothing here touches the disk, the network, a clock or randomness. Each entry point takes a message
// (or a timer firing) and returns the effects to carry out, in order: the driver (txn-driver.ts)
// performs `persist` before any `send` that follows it and `reply` last, which is what makes a vote or
// a decision durable before anyone hears of it. Specs drive these machines with a fake transport and a
// manual clock (spec/unit/txn-core.spec.ts).
//
// Rules, in one place:
// - Prepare: a participant refuses when the repo is locked by another transaction, when a create
//   finds it live or a delete finds it absent, when a push's base version is not its own, when a
//   push deletes a protected branch (the repo's replicated settings), when a settings change's base
//   (epoch, settingsVersion) is not its own. Otherwise it
//   locks the repo, stages the change out of sight, logs `prepared` (fsync) and votes yes.
// - The coordinator decides commit once W nodes (itself included) voted yes, abort as soon as W can
//   no longer be reached or the prepare timer fires. It logs the decision before sending it.
// - Versions come from the operation: a push moves a replica from its base (epoch, g) to (epoch, g+1);
//   a create or delete gets epoch = 1 + the highest epoch among the yes votes (any two quorums meet,
//   so epochs of committed changes to one repo strictly increase). A settings change keeps the epoch
//   and generation and moves the repo's settingsVersion from its base to base + 1 (carried in the
//   commit's `generation` field). A replica refuses a commit whose version does not follow its own,
//   and an acknowledgement counts only with the version applied.
// - Anti-entropy adopts a peer's newer epoch, and within one epoch a peer's higher settingsVersion.
// - A commit decision is final once W nodes hold it durably (the coordinator's own log is one); only
//   then does any replica apply it. With W <= 2 the coordinator's log and the first replica to accept
//   make W, so the commit message is applied at once; with W > 2 it is first accepted (logged, not
//   applied) by the yes voters and applied once W accepted (`final`).
// - Termination without the coordinator: a node holding a transaction in doubt asks the coordinator,
//   then every node. A node that never prepared it, or prepared it without accepting a commit, promises
//   never to accept one (`refused`, logged). Commit is certain once W nodes accepted it (one accepted
//   copy anywhere implies the coordinator's own); abort is certain once N - W + 1 nodes refused,
//   because no W nodes can then ever accept. The two are exclusive since W + (N - W + 1) > N, and with
//   a single node dead every node that lives answers one or the other, so a majority always finishes.
// - A node declared dead for good by the operator (`quorum-git node declare-dead`, at most N - W of
//   them) holds nothing any more: it is fenced, and rejoins only with an empty data dir. Its votes and
//   acceptances are void, so recovery stops asking it, and once every other node answered and neither
//   rule above decided, the live nodes' own records decide: commit if one of them holds an acceptance
//   of the commit (the coordinator's logged decision counts), abort if none does. That is safe: a
//   commit final with W acceptances has at least W - (N - W) >= 1 of them on a live node, and an
//   acknowledged push was applied by W nodes, so by a live one; with no live acceptance nothing live
//   can ever apply it. It is what ends the two-fault wait, where a transaction's outcome rested on
//   the answer of an acceptor that died for good (README, Limitations).
//   A live acceptance does not show the commit was final, though: the dead node may have refused
//   and, with the live refusals, proven an abort, then moved the repo on with another transaction
//   at the version this one would give. Recovery's questions name the repo, and each answer says
//   what the node holds of it; when a live node holds it past this transaction's base (or holds
//   another transaction on it with an acceptance), the rule decides abort. That is safe too: while
//   a commit is possibly final no other transaction at its base can gather W yes votes (its
//   acceptors hold the repo, and the live refusers are fewer than W), so a live node past the base
//   got there through this commit's history, and the node aborting it catches up from that one.
// - An abort the coordinator decided is final at once: it never sent a commit, so no node accepted one.

import type { ABORT_CODES, NO_VOTE_CODES } from './errors.js';
import { voteResult } from './quorum.js';
import type { RepoSettings } from './repo-settings.js';

export type NodeId = string;
export const ZERO_OID = '0000000000000000000000000000000000000000';

/**
 * Bytes one ref update may take on average ("<old> <new> <ref>": two object ids and a ref name),
 * bounding a push's command list wherever it arrives: the request head, the pre-receive hook's body,
 * a prepare, the proc-receive exchange.
 */
export const REF_UPDATE_BYTES = 300;

/** One ref change of a push, as git's pre-receive hook reports it. */
export interface RefUpdate {
  ref: string;
  old: string;
  new: string;
}

/** A repo's version on one node: its incarnation (create/delete) and the pushes committed since. */
export interface RepoVersion {
  epoch: number;
  generation: number;
}

export type TxnOp =
  /** A create may carry the repo's initial settings (absent: the defaults, see lib/core/repo-settings.ts). */
  | { kind: 'create'; repoId: string; settings?: RepoSettings }
  | { kind: 'delete'; repoId: string }
  /**
   * A change of the repo's settings (visibility, collaborators, protected branches). Committed on a
   * quorum like a create; refs and their version (epoch, generation) are untouched. The commit
   * message's `generation` carries the new settings version (base + 1), derived from the op like a
   * push's, so every replica and recovery agree on it.
   */
  | { kind: 'settings'; repoId: string; settings: RepoSettings; base: { epoch: number; settingsVersion: number } }
  | {
      kind: 'push';
      repoId: string;
      updates: RefUpdate[];
      /** The version every participant must be at: a replica at another version is stale or ahead. */
      base: RepoVersion;
      /** Where HEAD must point after the push (first push into a repo whose HEAD names no branch). */
      head?: string;
      /**
       * The settings version the coordinator checked the push's protected branches against. A
       * participant at another settings version votes stale: a coordinator that missed a change of
       * protection cannot get a force push past a quorum that holds it.
       */
      settingsVersion?: number;
    };
export type TxnOpKind = TxnOp['kind'];

/** A participant's no vote (see errors.ts: one vocabulary with the API's errors). */
export type NoVoteCode = (typeof NO_VOTE_CODES)[number];
export type Vote = { vote: 'yes'; epoch: number; generation: number } | { vote: 'no'; code: NoVoteCode; detail?: string };

export type TxnMessage =
  | { type: 'prepare'; txnId: string; op: TxnOp; coordinator: NodeId }
  /**
   * The commit decision with the version it gives. `final: false` asks a yes voter to accept it (log it,
   * apply nothing); `final: true` (or absent) tells it to apply: W nodes hold the decision once it accepts.
   */
  | { type: 'commitTxn'; txnId: string; epoch: number; generation: number; final?: boolean; acceptors?: NodeId[] }
  | { type: 'abortTxn'; txnId: string };

export type LogEntry =
  | { t: 'prepared'; txnId: string; op: TxnOp; coordinator: NodeId }
  /** A commit decision accepted here but not known final: nothing applied yet. */
  | { t: 'accepted'; txnId: string; epoch: number; generation: number; acceptors?: NodeId[] }
  /** A final commit, logged before it is applied; `applied` follows once the replica holds it. */
  | { t: 'committed'; txnId: string; epoch: number; generation?: number; acceptors?: NodeId[] }
  | { t: 'applied'; txnId: string }
  | { t: 'aborted'; txnId: string }
  /** A promise never to prepare or accept a commit of this transaction (a vote towards abort). */
  | { t: 'refused'; txnId: string }
  | { t: 'decision'; txnId: string; outcome: 'commit' | 'abort'; op: TxnOp; epoch?: number; generation?: number; acceptors?: NodeId[] }
  | { t: 'synced'; repoId: string; state: RepoState; epoch: number; generation?: number; settings?: RepoSettings; settingsVersion?: number }
  /** The operator declared a node dead for good (its records void, fenced) or readmitted it (empty). */
  | { t: 'member'; node: NodeId; dead: boolean };

export type RepoState = 'live' | 'deleted';
export interface CatalogEntry extends RepoVersion {
  state: RepoState;
  /** The repo's replicated settings; absent: the defaults (a log written before settings existed). */
  settings?: RepoSettings;
  /** Settings changes committed in this incarnation: 0 at create, +1 per `settings` transaction. */
  settingsVersion?: number;
}

/** The ref a protected-branch rule refuses to delete, if the push deletes one (checked at prepare). */
export function protectedDeletion(updates: readonly RefUpdate[], settings: RepoSettings | undefined): string | undefined {
  if (!settings || settings.protectedBranches.length === 0) return undefined;
  return updates.find((u) => u.new === ZERO_OID && settings.protectedBranches.includes(u.ref))?.ref;
}

/** Orders two versions of one repo: negative when a is older. */
export function compareVersions(a: RepoVersion, b: RepoVersion): number {
  return a.epoch !== b.epoch ? a.epoch - b.epoch : a.generation - b.generation;
}

/** What the coordinator aborts with (see errors.ts). */
export type AbortCode = (typeof ABORT_CODES)[number];

export type CoordinatorResult =
  /**
   * `confirmed`: nodes that applied it (for a push, the coordinator counts once final: receive-pack
   * moves its refs before the client hears back); `applying`: yes voters a push's answer did not wait
   * for; `unanswered`: nodes whose vote had not come (or never could: unreachable), told the final
   * commit once it does, which they apply if they staged it, and otherwise catch up; `behind`: the
   * rest (they voted no, refused the commit, or did not acknowledge it before the resends ran out),
   * which catch up later. `final: false`: no W nodes were known to hold the decision
   * when the resends ran out, so the outcome is left to recovery (it may yet abort).
   */
  | { outcome: 'committed'; epoch: number; generation: number; confirmed: NodeId[]; applying: NodeId[]; unanswered: NodeId[]; behind: NodeId[]; final?: boolean }
  /** `failed`: nodes that did not vote yes for want of being reachable or able to stage; `unprepared` the latter. */
  | { outcome: 'aborted'; code: AbortCode; failed: NodeId[]; unprepared?: NodeId[]; detail?: string };

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

// A push differs in one way: the coordinator's own replica is committed by git receive-pack after the
// pre-receive hook returns, so the coordinator's yes vote is required, counts towards the quorum, and
// its acknowledgement is not waited for (it could not come before the reply it would be waiting on).

/** A vote the coordinator made up for a node that did not answer its prepare (timed out, refused the connection). */
function unanswered(vote: Vote): boolean {
  return vote.vote === 'no' && vote.code === 'unreachable';
}

export class CoordinatorTxn {
  readonly txnId: string;
  readonly op: TxnOp;
  private readonly options: CoordinatorOptions;
  private readonly votes = new Map<NodeId, Vote>();
  /**
   * The nodes that may accept the commit: the coordinator (its log) and the yes voters when it decided.
   * Fixed at the decision and sent with it, so a node recovering the transaction knows that once more
   * than |acceptors| - W of them refused, it can never become final. A yes that comes later is told
   * the commit only once it is final, and never counts towards it.
   */
  private acceptors: NodeId[] = [];
  /** Acceptors that accepted the commit decision (W > 2 only), the coordinator's own log included. */
  private readonly accepted = new Set<NodeId>();
  /** Yes voters heard after the decision, told the commit once it is final. */
  private readonly lateVoters = new Set<NodeId>();
  /** Nodes that applied the final commit, at the decided version. */
  private readonly acks = new Set<NodeId>();
  /** Nodes that refused the commit (they promised a recovering node never to accept it). */
  private readonly refusals = new Set<NodeId>();
  private phase: 'idle' | 'collecting' | 'accepting' | 'committing' | 'aborted' | 'done' = 'idle';
  /** The decision is final: W nodes hold it. Only then is anything applied, the coordinator's own replica included. */
  private final = false;
  private selfCommitSent = false;
  protected epoch = 0;
  protected generation = 0;
  private replied = false;
  private resendsLeft: number;

  constructor(options: CoordinatorOptions) {
    this.options = options;
    this.txnId = options.txnId;
    this.op = options.op;
    this.resendsLeft = options.commitResends;
  }

  private get selfCommitsLater(): boolean {
    return this.op.kind === 'push';
  }

  /** With W <= 2 the coordinator's logged decision and any one replica that accepts it are W. */
  private get finalOnFirstAccept(): boolean {
    return this.options.quorum <= 2;
  }

  /** The version a commit of this transaction gives, as every replica derives it too. */
  get version(): RepoVersion {
    return { epoch: this.epoch, generation: this.generation };
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
    // Done with a final commit (the yes voters all acknowledged) while a prepare's answer was still out.
    if (this.phase === 'accepting' || this.phase === 'committing' || (this.phase === 'done' && this.final)) {
      // A yes that arrives after the decision still gets the decision, so the voter is not left in doubt;
      // so does a node whose answer never came (it may hold the prepare), once the commit is final.
      this.votes.set(from, vote);
      if (vote.vote === 'no' && !unanswered(vote)) return [];
      if (!this.final) {
        if (vote.vote === 'yes') this.lateVoters.add(from);
        return [];
      }
      return [{ type: 'send', to: from, msg: this.commitMessage(from) }];
    }
    if (this.phase !== 'collecting') return [];
    this.votes.set(from, vote);
    const { self, nodes, quorum } = this.options;
    if (this.selfCommitsLater && from === self && vote.vote === 'no') return this.decideAbort(false);
    const { yes, no } = this.tally();
    const result = voteResult(yes.length, no.length, nodes.length, quorum);
    if (result === 'lost') return this.decideAbort(false);
    if (result === 'won' && (!this.selfCommitsLater || yes.includes(self))) return this.decideCommit(yes);
    return [];
  }

  /**
   * A yes voter's answer to a commit message. `vote.yes` counts only with the decided version: a
   * replica that applied (or accepted) anything else has not applied this transaction.
   */
  onCommitReply(from: NodeId, vote: Vote, final: boolean): CoordinatorEffect[] {
    if ((this.phase !== 'accepting' && this.phase !== 'committing') || !this.yesVoters().includes(from)) return [];
    if (vote.vote === 'no') {
      if (vote.code !== 'refused' || this.final || !this.acceptors.includes(from)) return [];
      this.refusals.add(from);
      // More than |acceptors| - W refusals: no W acceptors are left, so the commit can never be final.
      if (this.refusals.size > this.acceptors.length - this.options.quorum) return this.abortUnfinished();
      return [];
    }
    if (vote.epoch !== this.epoch || vote.generation !== this.generation) return [];
    if (!final) {
      if (this.phase !== 'accepting' || this.accepted.has(from) || !this.acceptors.includes(from)) return [];
      this.accepted.add(from);
      if (this.accepted.size < this.options.quorum) return [];
      return this.becomeFinal();
    }
    if (this.phase !== 'committing' || this.acks.has(from)) return [];
    this.acks.add(from);
    const effects: CoordinatorEffect[] = [];
    if (!this.final) effects.push(...this.becomeFinal());
    effects.push(...this.progress(false));
    return effects;
  }

  /** Kept for callers that only see acknowledgements of a final commit at the decided version. */
  onAck(from: NodeId): CoordinatorEffect[] {
    return this.onCommitReply(from, { vote: 'yes', epoch: this.epoch, generation: this.generation }, true);
  }

  onTimer(name: CoordinatorTimer): CoordinatorEffect[] {
    if (name === 'prepare' && this.phase === 'collecting') return this.decideAbort(true);
    if (name === 'commit' && (this.phase === 'committing' || this.phase === 'accepting')) {
      // The decision is durable and reaches every yes voter eventually (they ask us once we stop
      // resending); with a quorum confirmed, the client hears back without waiting for the rest.
      const pending = this.pendingAcks();
      const effects = this.phase === 'committing' ? this.progress(true, this.resendsLeft === 0 || pending.length === 0) : [];
      if (this.phase === 'accepting' && this.resendsLeft === 0) effects.push(...this.replyUnconfirmed());
      if (this.phase !== 'committing' && this.phase !== 'accepting') return effects;
      if (this.resendsLeft > 0 && pending.length > 0) {
        this.resendsLeft -= 1;
        for (const to of pending) effects.push({ type: 'send', to, msg: this.commitMessage(to) });
        effects.push({ type: 'setTimer', name: 'commit', ms: this.options.commitTimeoutMs });
      } else {
        this.phase = 'done';
        effects.push({ type: 'done' });
      }
      return effects;
    }
    return [];
  }

  private commitMessage(to: NodeId): TxnMessage {
    // Before the decision is final, a yes voter is asked to accept it; the coordinator's own replica
    // is only ever told once final (its log already holds the decision).
    const final = this.final || (this.finalOnFirstAccept && to !== this.options.self);
    return { type: 'commitTxn', txnId: this.txnId, epoch: this.epoch, generation: this.generation, final, acceptors: this.acceptors };
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

  /**
   * Yes voters not yet heard from for the current phase (for a push, the coordinator's own is not
   * awaited). Until the decision is final, only the acceptors: a late yes voter asked to accept would
   * hold an acceptance recovery cannot place (it is not among the acceptors the decision named). That
   * holds with W <= 2 too, where the commit goes out marked final: a late voter applying it would make
   * the commit final behind recovery's back (it counts acceptances and refusals among the acceptors).
   */
  private pendingAcks(): NodeId[] {
    const heard = this.phase === 'accepting' ? this.accepted : this.acks;
    const asked = this.final ? this.yesVoters() : this.yesVoters().filter((n) => this.acceptors.includes(n));
    return asked.filter(
      (n) => !heard.has(n) && !this.refusals.has(n) && !(n === this.options.self && (this.selfCommitsLater || !this.final)),
    );
  }

  /** Nodes holding the change: those that applied it, and for a final push the coordinator (its refs move when receive-pack's proc-receive hook asks). */
  private confirmed(): NodeId[] {
    const nodes = [...this.acks];
    if (this.selfCommitsLater && this.final && !this.acks.has(this.options.self)) nodes.unshift(this.options.self);
    return nodes;
  }

  /** W nodes hold the decision: every yes voter (the coordinator's replica included) may now apply it. */
  private becomeFinal(): CoordinatorEffect[] {
    this.final = true;
    const effects: CoordinatorEffect[] = [];
    const { self } = this.options;
    if (this.phase === 'accepting') {
      this.phase = 'committing';
      for (const to of this.yesVoters()) if (!this.refusals.has(to)) effects.push({ type: 'send', to, msg: this.commitMessage(to) });
    } else {
      if (!this.selfCommitSent && this.yesVoters().includes(self)) effects.push({ type: 'send', to: self, msg: this.commitMessage(self) });
      for (const to of this.lateVoters) if (to !== self) effects.push({ type: 'send', to, msg: this.commitMessage(to) });
    }
    // A node whose prepare went unanswered may have staged it and be holding the repo: it is told the
    // final commit too, once (it applies it, or, never prepared, promises never to accept it). Its
    // answer counts for nothing: it is not among the acceptors, nor a yes voter.
    for (const [to, vote] of this.votes) if (to !== self && unanswered(vote)) effects.push({ type: 'send', to, msg: this.commitMessage(to) });
    this.lateVoters.clear();
    this.selfCommitSent = true;
    return effects;
  }

  /**
   * Replies once a quorum has committed and (for a create or delete) every yes voter has acknowledged,
   * or, when the commit timer fires, with what is confirmed by then; done once nothing is left to
   * wait for. A push is answered as soon as a quorum confirmed it: the pusher does not wait for the
   * slowest replica, which holds the push prepared and is told to commit (reported as applying).
   */
  private progress(timerFired: boolean, lastChance = false): CoordinatorEffect[] {
    const effects: CoordinatorEffect[] = [];
    const { self, quorum } = this.options;
    const selfSettled = this.selfCommitsLater || this.acks.has(self) || this.votes.get(self)?.vote === 'no';
    const enough = this.confirmed().length >= quorum && selfSettled;
    const allAcked = this.pendingAcks().length === 0;
    // Never "ok" before a quorum confirmed, unless the resends are spent: the change is then decided
    // and prepared (durable) on a quorum, and the client is told how far it got.
    if (!this.replied && ((enough && (allAcked || timerFired || this.selfCommitsLater)) || lastChance)) {
      this.replied = true;
      const confirmed = this.confirmed();
      const applying = lastChance ? [] : this.pendingAcks();
      const rest = this.options.nodes.filter((n) => !confirmed.includes(n) && !applying.includes(n));
      const silent = (n: NodeId): boolean => {
        const vote = this.votes.get(n);
        return vote === undefined || unanswered(vote);
      };
      effects.push({
        type: 'reply',
        result: {
          outcome: 'committed',
          epoch: this.epoch,
          generation: this.generation,
          confirmed,
          applying,
          unanswered: rest.filter(silent),
          behind: rest.filter((n) => !silent(n)),
          final: this.final,
        },
      });
    }
    if (allAcked && this.votes.size === this.options.nodes.length) {
      this.phase = 'done';
      effects.push({ type: 'done' });
    }
    return effects;
  }

  /** The resends ran out before the decision was final: the outcome is not known here yet. */
  private replyUnconfirmed(): CoordinatorEffect[] {
    if (this.replied) return [];
    this.replied = true;
    return [
      {
        type: 'reply',
        result: { outcome: 'committed', epoch: this.epoch, generation: this.generation, confirmed: [], applying: [], unanswered: [], behind: [...this.options.nodes], final: false },
      },
    ];
  }

  private decideCommit(yes: NodeId[]): CoordinatorEffect[] {
    if (this.op.kind === 'push') {
      this.epoch = this.op.base.epoch;
      this.generation = this.op.base.generation + 1;
    } else if (this.op.kind === 'settings') {
      // `generation` here is the new settings version: the refs' version does not move.
      this.epoch = this.op.base.epoch;
      this.generation = this.op.base.settingsVersion + 1;
    } else {
      let highest = 0;
      for (const node of yes) {
        const vote = this.votes.get(node);
        if (vote?.vote === 'yes') highest = Math.max(highest, vote.epoch);
      }
      this.epoch = highest + 1;
      this.generation = 0;
    }
    this.phase = this.finalOnFirstAccept ? 'committing' : 'accepting';
    this.acceptors = [...new Set([this.options.self, ...yes])];
    this.accepted.add(this.options.self);
    // A single node is its own quorum: the logged decision is final.
    if (this.options.quorum <= 1) {
      this.final = true;
      this.phase = 'committing';
      this.selfCommitSent = true;
    }
    const { txnId, op } = this;
    const { self } = this.options;
    return [
      { type: 'persist', entry: { t: 'decision', txnId, outcome: 'commit', op, epoch: this.epoch, generation: this.generation, acceptors: this.acceptors } },
      ...yes.filter((to) => to !== self || this.final).map((to): CoordinatorEffect => ({ type: 'send', to, msg: this.commitMessage(to) })),
      { type: 'setTimer', name: 'commit', ms: this.options.commitTimeoutMs },
    ];
  }

  /**
   * The commit was refused by N - W + 1 nodes before it became final: it can never become final, so
   * it is aborted (logged, then told to everyone) and the client hears that nothing changed.
   */
  private abortUnfinished(): CoordinatorEffect[] {
    this.phase = 'aborted';
    const { txnId, op } = this;
    const effects: CoordinatorEffect[] = [{ type: 'persist', entry: { t: 'decision', txnId, outcome: 'abort', op } }];
    for (const to of this.options.nodes) effects.push({ type: 'send', to, msg: { type: 'abortTxn', txnId } });
    if (!this.replied) {
      this.replied = true;
      effects.push({ type: 'reply', result: { outcome: 'aborted', code: 'quorum_unreachable', failed: [...this.refusals] } });
    }
    effects.push({ type: 'done' });
    return effects;
  }

  /** `timedOut`: nodes that have not voted count as failed; otherwise they were merely not needed. */
  private decideAbort(timedOut: boolean): CoordinatorEffect[] {
    this.phase = 'aborted';
    const { txnId, op } = this;
    const effects: CoordinatorEffect[] = [{ type: 'persist', entry: { t: 'decision', txnId, outcome: 'abort', op } }];
    // Every node a prepare went to hears the abort, whatever it answered: a no may have come from a
    // duplicate while the first copy was still preparing, and a node that is paused may get its
    // prepare after this; either then holds nothing for long. A node we cannot reach asks us later.
    for (const to of this.options.nodes) effects.push({ type: 'send', to, msg: { type: 'abortTxn', txnId } });
    effects.push({ type: 'reply', result: this.abortResult(timedOut) }, { type: 'done' });
    this.replied = true;
    return effects;
  }

  private abortResult(timedOut: boolean): CoordinatorResult {
    const failed: NodeId[] = [];
    const unprepared: NodeId[] = [];
    let conflict: { code: AbortCode; detail?: string } | undefined;
    // The most telling reason wins: a conflict the user can act on before "busy" or "stale".
    const rank: Partial<Record<NoVoteCode, number>> = { ref_conflict: 4, ref_name_clash: 4, protected_ref: 4, repo_exists: 3, repo_not_found: 3, stale: 2, repo_busy: 1, refused: 1 };
    for (const node of this.options.nodes) {
      const vote = this.votes.get(node);
      if (vote === undefined) {
        if (timedOut) failed.push(node);
      } else if (vote.vote === 'no' && (vote.code === 'unreachable' || vote.code === 'stage_failed')) {
        failed.push(node);
        if (vote.code === 'stage_failed') unprepared.push(node);
      } else if (vote.vote === 'no') {
        const code: AbortCode = vote.code === 'refused' ? 'repo_busy' : (vote.code as AbortCode);
        if (conflict === undefined || (rank[vote.code] ?? 0) > (rank[conflict.code as NoVoteCode] ?? 0)) {
          conflict = { code, ...(vote.detail === undefined ? {} : { detail: vote.detail }) };
        }
      }
    }
    // With a quorum of nodes reachable, a refusal is the reason; otherwise the quorum is.
    const reachable = this.options.nodes.length - failed.length;
    if (conflict && (reachable >= this.options.quorum || conflict.code === 'ref_conflict' || conflict.code === 'ref_name_clash' || conflict.code === 'protected_ref')) {
      return { outcome: 'aborted', code: conflict.code, failed, ...(unprepared.length > 0 ? { unprepared } : {}), ...(conflict.detail === undefined ? {} : { detail: conflict.detail }) };
    }
    return { outcome: 'aborted', code: 'quorum_unreachable', failed, ...(unprepared.length > 0 ? { unprepared } : {}) };
  }
}

// ---------------------------------------------------------------------------------------------
// Participant: every node, the coordinator included, is one.

/**
 * `accepted`: a commit decision logged here but not known final, nothing applied; `committing`: the
 * commit is final and logged, the replica applying it (after a restart: maybe applied already).
 */
export type TxnStatus = 'preparing' | 'prepared' | 'accepted' | 'committing' | 'committed' | 'aborted' | 'refused';
interface TxnRecord {
  status: TxnStatus;
  op?: TxnOp;
  coordinator?: NodeId;
  epoch?: number;
  generation?: number;
  /** A push this replica could not apply (it stays behind until catch-up). */
  applyFailed?: boolean;
  /** The decision's acceptors, as the commit message named them. */
  acceptors?: NodeId[];
  /** When this node finished preparing it (memory only: one replayed at start has none). */
  preparedAt?: number;
}

export type ParticipantEffect =
  | { type: 'stage'; txnId: string; op: TxnOp; coordinator: NodeId }
  | { type: 'apply'; txnId: string; op: TxnOp; epoch: number; generation: number; coordinator: NodeId }
  | { type: 'discard'; txnId: string; op: TxnOp }
  | { type: 'sync'; repoId: string; from: CatalogEntry | undefined; to: CatalogEntry }
  | { type: 'persist'; entry: LogEntry }
  | { type: 'reply'; vote: Vote };

export type QueryOutcome = 'committed' | 'accepted' | 'aborted' | 'prepared' | 'refused' | 'pending';

/**
 * What a node answering a recovery question holds of the transaction's repo, when the asker named it:
 * its version (zeros when it has none), and whether another transaction holds the repo with an
 * acceptance of its commit (accepted, committing, or our own commit decision). See resolveInDoubt's
 * `movedOn`.
 */
export interface RepoFacts {
  epoch: number;
  generation: number;
  settingsVersion: number;
  held: boolean;
}

export interface QueryAnswer {
  outcome: QueryOutcome;
  epoch?: number;
  generation?: number;
  /** With `accepted` or `committed`: the nodes that may accept the commit (see CoordinatorTxn). */
  acceptors?: NodeId[];
  /** When the asker named the repo: what this node holds of it, read as it answered. */
  repo?: RepoFacts;
  effects: ParticipantEffect[];
}
interface Decision {
  outcome: 'commit' | 'abort';
  epoch?: number;
  generation?: number;
  op?: TxnOp;
  acceptors?: NodeId[];
}

/** The version (and the acceptors, when known) of a record or decision, as optional fields. */
function versionFields(v: { epoch?: number; generation?: number; acceptors?: NodeId[] }): { epoch?: number; generation?: number; acceptors?: NodeId[] } {
  return {
    ...(v.epoch === undefined ? {} : { epoch: v.epoch }),
    ...(v.generation === undefined ? {} : { generation: v.generation }),
    ...(v.acceptors === undefined ? {} : { acceptors: v.acceptors }),
  };
}

/** The version a commit of `op` must give a replica at `current`, or why it cannot. */
export function commitVersionProblem(op: TxnOp, current: RepoVersion, version: RepoVersion, currentSettingsVersion = 0): string | undefined {
  if (op.kind === 'settings') {
    // `version.generation` is the settings version the commit gives (see TxnOp).
    if (version.epoch !== op.base.epoch || version.generation !== op.base.settingsVersion + 1) {
      return `settings commit at ${version.epoch}.${version.generation} does not follow the base ${op.base.epoch}.${op.base.settingsVersion}`;
    }
    if (current.epoch !== op.base.epoch || currentSettingsVersion !== op.base.settingsVersion) {
      return `replica settings at ${current.epoch}.${currentSettingsVersion}, change based on ${op.base.epoch}.${op.base.settingsVersion}`;
    }
    return undefined;
  }
  if (op.kind === 'push') {
    if (version.epoch !== op.base.epoch || version.generation !== op.base.generation + 1) {
      return `commit at ${version.epoch}.${version.generation} does not follow the push's base ${op.base.epoch}.${op.base.generation}`;
    }
    if (compareVersions(current, op.base) !== 0) return `replica at ${current.epoch}.${current.generation}, push based on ${op.base.epoch}.${op.base.generation}`;
    return undefined;
  }
  if (version.generation !== 0 || version.epoch <= current.epoch) return `${op.kind} at epoch ${version.epoch} does not follow epoch ${current.epoch}`;
  return undefined;
}

export class Participant {
  private readonly repos = new Map<string, CatalogEntry>();
  private readonly locks = new Map<string, string>();
  private readonly txns = new Map<string, TxnRecord>();
  /** Decisions this node took as coordinator (a commit decision is this node's acceptance of it). */
  private readonly decisions = new Map<string, Decision>();
  /** Nodes the operator declared dead for good (see the rules above). */
  private readonly dead = new Set<NodeId>();

  /** Rebuilds state from one log entry, in log order. */
  replay(entry: LogEntry): void {
    switch (entry.t) {
      case 'prepared': {
        // A later prepare of the same repo proves the one before it was applied here (its lock was
        // released only once it was): never apply that one again.
        const holder = this.locks.get(entry.op.repoId);
        if (holder !== undefined && this.txns.get(holder)?.status === 'committing') this.onCommitted(holder);
        this.txns.set(entry.txnId, { status: 'prepared', op: entry.op, coordinator: entry.coordinator });
        this.locks.set(entry.op.repoId, entry.txnId);
        return;
      }
      case 'accepted': {
        const rec = this.txns.get(entry.txnId);
        if (rec?.status === 'prepared') Object.assign(rec, { status: 'accepted', epoch: entry.epoch, generation: entry.generation }, entry.acceptors ? { acceptors: entry.acceptors } : {});
        return;
      }
      case 'committed': {
        const rec = this.txns.get(entry.txnId);
        const generation = entry.generation ?? 0;
        const acceptors = entry.acceptors ? { acceptors: entry.acceptors } : {};
        if (rec?.op && (rec.status === 'prepared' || rec.status === 'accepted')) {
          // Final, maybe not applied: the driver makes sure at start (idempotently) unless `applied` follows.
          Object.assign(rec, { status: 'committing', epoch: entry.epoch, generation }, acceptors);
        } else {
          this.txns.set(entry.txnId, { ...rec, status: 'committed', epoch: entry.epoch, generation, ...acceptors });
        }
        return;
      }
      case 'applied':
        this.onCommitted(entry.txnId);
        return;
      case 'aborted':
      case 'refused': {
        const rec = this.txns.get(entry.txnId);
        if (rec?.op) this.unlock(rec.op.repoId, entry.txnId);
        this.txns.set(entry.txnId, { ...rec, status: entry.t });
        return;
      }
      case 'decision':
        this.recordDecision(entry.txnId, entry.outcome, entry.epoch, entry.generation, entry.op, entry.acceptors);
        return;
      case 'member':
        if (entry.dead) this.dead.add(entry.node);
        else this.dead.delete(entry.node);
        return;
      case 'synced': {
        // A catch-up or an adopted state logged after a final commit of the repo means that commit's
        // apply was settled (it failed and the replica was caught up instead): never apply it again.
        const holder = this.locks.get(entry.repoId);
        if (holder !== undefined && this.txns.get(holder)?.status === 'committing') this.onCommitted(holder);
        this.repos.set(entry.repoId, {
          state: entry.state,
          epoch: entry.epoch,
          generation: entry.generation ?? 0,
          ...(entry.settings === undefined ? {} : { settings: entry.settings, settingsVersion: entry.settingsVersion ?? 0 }),
        });
        return;
      }
    }
  }

  repo(repoId: string): CatalogEntry | undefined {
    return this.repos.get(repoId);
  }

  /** The nodes the operator declared dead for good, sorted. */
  deadNodes(): NodeId[] {
    return [...this.dead].sort();
  }

  isDead(node: NodeId): boolean {
    return this.dead.has(node);
  }

  /** No repo, no transaction and no decision: a node on an empty data dir (it may be readmitted). */
  isEmpty(): boolean {
    return this.repos.size === 0 && this.txns.size === 0 && this.decisions.size === 0;
  }

  /**
   * The operator declares `node` dead for good (`dead: true`), or readmits it once it runs on an empty
   * data dir (`dead: false`). Logged before it takes effect; nothing when it already holds. Whether the
   * declaration is allowed (never ourselves, at most N - W nodes) is the caller's check: see
   * `deathDeclarationProblem`.
   */
  onMembership(node: NodeId, dead: boolean): ParticipantEffect[] {
    if (this.dead.has(node) === dead) return [];
    if (dead) this.dead.add(node);
    else this.dead.delete(node);
    return [{ type: 'persist', entry: { t: 'member', node, dead } }];
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

  /** Transactions prepared or accepted here with no final outcome: they hold their repo's lock. */
  inDoubt(): { txnId: string; op: TxnOp; coordinator: NodeId; status: 'prepared' | 'accepted' }[] {
    const out: { txnId: string; op: TxnOp; coordinator: NodeId; status: 'prepared' | 'accepted' }[] = [];
    for (const [txnId, rec] of this.txns) {
      if ((rec.status === 'prepared' || rec.status === 'accepted') && rec.op && rec.coordinator) {
        out.push({ txnId, op: rec.op, coordinator: rec.coordinator, status: rec.status });
      }
    }
    return out;
  }

  /** Final commits not known to be applied here (after a restart, or an apply that failed): apply them. */
  unapplied(): { txnId: string; op: TxnOp; coordinator: NodeId; epoch: number; generation: number }[] {
    const out: { txnId: string; op: TxnOp; coordinator: NodeId; epoch: number; generation: number }[] = [];
    for (const [txnId, rec] of this.txns) {
      if (rec.status === 'committing' && rec.op) out.push({ txnId, op: rec.op, coordinator: rec.coordinator ?? '', epoch: rec.epoch ?? 0, generation: rec.generation ?? 0 });
    }
    return out;
  }

  /** Applying again a final commit whose `applied` record is missing: idempotent, answered yes at its version. */
  onReapply(txnId: string): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (rec?.status !== 'committing' || !rec.op) return [];
    const version = { epoch: rec.epoch ?? 0, generation: rec.generation ?? 0 };
    return [
      { type: 'apply', txnId, op: rec.op, ...version, coordinator: rec.coordinator ?? '' },
      { type: 'reply', vote: { vote: 'yes', ...version } },
    ];
  }

  status(txnId: string): TxnStatus | undefined {
    return this.txns.get(txnId)?.status;
  }

  opOf(txnId: string): TxnOp | undefined {
    return this.txns.get(txnId)?.op;
  }

  /** The coordinator the prepare of a transaction named, as recorded here (for checking who sends its commit or abort). */
  coordinatorOf(txnId: string): NodeId | undefined {
    return this.txns.get(txnId)?.coordinator || undefined;
  }

  decision(txnId: string): Decision | undefined {
    return this.decisions.get(txnId);
  }

  recordDecision(txnId: string, outcome: 'commit' | 'abort', epoch?: number, generation?: number, op?: TxnOp, acceptors?: NodeId[]): void {
    const known = this.decisions.get(txnId)?.op;
    const kept = op ?? known;
    this.decisions.set(txnId, {
      outcome,
      ...(epoch === undefined ? {} : { epoch }),
      ...(generation === undefined ? {} : { generation }),
      ...(kept ? { op: kept } : {}),
      ...(acceptors && outcome === 'commit' ? { acceptors } : {}),
    });
  }

  /** The version of a commit decision this node accepted (not yet final), if it did. */
  acceptedVersion(txnId: string): RepoVersion | undefined {
    const rec = this.txns.get(txnId);
    return rec?.status === 'accepted' && rec.epoch !== undefined ? { epoch: rec.epoch, generation: rec.generation ?? 0 } : undefined;
  }

  /** The acceptors of a transaction's commit decision, if this node knows them. */
  acceptorsOf(txnId: string): NodeId[] | undefined {
    return this.txns.get(txnId)?.acceptors ?? this.decisions.get(txnId)?.acceptors;
  }

  /**
   * Commit decisions this node took as coordinator without a replica of its own in the transaction
   * (it voted no, or refused later), and not known final: recovery asks the others how they ended.
   */
  unsettledDecisions(): { txnId: string; op: TxnOp }[] {
    const out: { txnId: string; op: TxnOp }[] = [];
    for (const [txnId, d] of this.decisions) {
      const status = this.txns.get(txnId)?.status;
      if (d.outcome === 'commit' && d.op && (status === undefined || status === 'refused' || status === 'aborted')) out.push({ txnId, op: d.op });
    }
    return out;
  }

  /** A commit decision of ours proven final elsewhere, with no replica of ours in it: nothing to apply. */
  onDecisionSettled(txnId: string, outcome: 'commit' | 'abort'): ParticipantEffect[] {
    const d = this.decisions.get(txnId);
    if (!d) return [];
    if (outcome === 'abort') {
      this.decisions.set(txnId, { outcome: 'abort', ...(d.op ? { op: d.op } : {}) });
      return [{ type: 'persist', entry: { t: 'decision', txnId, outcome: 'abort', op: d.op ?? { kind: 'create', repoId: '' } } }];
    }
    this.txns.set(txnId, { status: 'committed', ...versionFields(d) });
    return [{ type: 'persist', entry: { t: 'committed', txnId, epoch: d.epoch ?? 0, generation: d.generation ?? 0 } }];
  }

  /**
   * A prepare. For a push, `observedRefs` is what this replica's refs hold now (read by the driver);
   * each update's old value must match it, and the replica must be at the push's base version.
   */
  onPrepare(msg: Extract<TxnMessage, { type: 'prepare' }>, observedRefs?: Readonly<Record<string, string>>): ParticipantEffect[] {
    const { txnId, op, coordinator } = msg;
    // A no from a node that does not hold the transaction (stale, conflict, busy, refused) also drops
    // the pack shipped ahead of the prepare: nobody sends an abort to a no voter.
    const no = (code: NoVoteCode, detail?: string): ParticipantEffect[] => {
      const status = this.txns.get(txnId)?.status;
      const drop = op.kind === 'push' && (status === undefined || status === 'refused');
      return [...(drop ? [{ type: 'discard', txnId, op } as const] : []), { type: 'reply', vote: { vote: 'no', code, ...(detail === undefined ? {} : { detail }) } }];
    };
    const known = this.txns.get(txnId);
    if (known) {
      // Duplicate prepare: repeat the durable answer, never a second staging. An abort or a refusal
      // that came first (a prepare delayed past its coordinator's timeout) makes it a no.
      if (known.status === 'prepared' || known.status === 'accepted' || known.status === 'committing' || known.status === 'committed') {
        return [{ type: 'reply', vote: { vote: 'yes', ...this.versionOf(op.repoId) } }];
      }
      return no(known.status === 'preparing' ? 'repo_busy' : 'refused');
    }
    if (this.decisions.has(txnId)) return no('refused');
    if (this.locks.get(op.repoId) !== undefined) return no('repo_busy');
    const live = this.isLive(op.repoId);
    if (op.kind === 'create' && live) return no('repo_exists');
    if (op.kind !== 'create' && !live) return no('repo_not_found');
    if (op.kind === 'settings') {
      const entry = this.repos.get(op.repoId)!;
      const mine = entry.settingsVersion ?? 0;
      if (entry.epoch !== op.base.epoch || mine !== op.base.settingsVersion) {
        return no('stale', `settings at ${entry.epoch}.${mine}, change based on ${op.base.epoch}.${op.base.settingsVersion}`);
      }
    }
    if (op.kind === 'push') {
      const mine = this.versionOf(op.repoId);
      if (compareVersions(mine, op.base) !== 0) return no('stale', `at generation ${mine.generation}, push based on ${op.base.generation}`);
      const mySettings = this.repos.get(op.repoId)?.settingsVersion ?? 0;
      if (op.settingsVersion !== undefined && op.settingsVersion !== mySettings) {
        return no('stale', `at settings version ${mySettings}, push checked against ${op.settingsVersion}`);
      }
      if (observedRefs === undefined) return no('stage_failed');
      for (const update of op.updates) {
        const current = observedRefs[update.ref] ?? ZERO_OID;
        if (current !== update.old) return no('ref_conflict', update.ref);
      }
      const clash = refNameClash(op.updates, observedRefs);
      if (clash !== undefined) return no('ref_name_clash', clash);
      // Defence in depth: the coordinator's hook refuses this first (and a non-fast-forward move,
      // which needs the objects); every replica refuses a protected deletion alike by its own settings.
      const protectedRef = protectedDeletion(op.updates, this.repos.get(op.repoId)?.settings);
      if (protectedRef !== undefined) return no('protected_ref', protectedRef);
    }
    this.locks.set(op.repoId, txnId);
    this.txns.set(txnId, { status: 'preparing', op, coordinator });
    return [{ type: 'stage', txnId, op, coordinator }];
  }

  /**
   * The driver staged a prepare: log it, unless an abort overtook the staging (the coordinator gave
   * up on us meanwhile), in which case what was staged is undone and the vote is no. `prepared` is
   * never logged after `aborted`.
   */
  onStaged(txnId: string): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (rec?.status === 'preparing' && rec.op && rec.coordinator !== undefined) {
      return [{ type: 'persist', entry: { t: 'prepared', txnId, op: rec.op, coordinator: rec.coordinator } }];
    }
    return this.abortedWhileStaging(txnId, rec);
  }

  /**
   * The driver logged `prepared` (at `now` on its clock, which starts the in-doubt grace period):
   * vote yes, or, if an abort arrived while the entry was being written, undo and vote no.
   */
  onPrepared(txnId: string, now?: number): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (rec?.status === 'preparing' && rec.op) {
      rec.status = 'prepared';
      if (now !== undefined) rec.preparedAt = now;
      return [{ type: 'reply', vote: { vote: 'yes', ...this.versionOf(rec.op.repoId) } }];
    }
    return this.abortedWhileStaging(txnId, rec);
  }

  private abortedWhileStaging(txnId: string, rec: TxnRecord | undefined): ParticipantEffect[] {
    return [...(rec?.op ? [{ type: 'discard', txnId, op: rec.op } as const] : []), { type: 'reply', vote: { vote: 'no', code: 'refused' } }];
  }

  /**
   * What the driver must do before a prepare can be judged: wait for the apply of the commit that
   * still holds the repo (the previous push's answer went to its pusher once a quorum had it, and a
   * push right behind it should find the repo free, not busy), and which refs to read from disk. A
   * push that creates a ref is checked against every ref (directory/file clashes); one that only
   * moves or deletes refs needs just those.
   */
  planPrepare(msg: Extract<TxnMessage, { type: 'prepare' }>): { waitForApply?: string; readRefs: 'none' | 'all' | string[] } {
    const { op } = msg;
    const holder = this.locks.get(op.repoId);
    const waitForApply = holder !== undefined && this.txns.get(holder)?.status === 'committing' ? { waitForApply: holder } : {};
    if (op.kind !== 'push' || !this.isLive(op.repoId)) return { ...waitForApply, readRefs: 'none' };
    const creates = op.updates.some((u) => u.old === ZERO_OID);
    return { ...waitForApply, readRefs: creates ? 'all' : op.updates.map((u) => u.ref) };
  }

  /**
   * Transactions in doubt that are due to be asked about: prepared longer ago than `graceMs` (before
   * that the coordinator is still deciding, and asking would only race its commit), or replayed from
   * the log at start (asked at once).
   */
  inDoubtDue(now: number, graceMs: number): ReturnType<Participant['inDoubt']> {
    return this.inDoubt().filter((t) => {
      const at = this.txns.get(t.txnId)?.preparedAt;
      return at === undefined || now - at >= graceMs;
    });
  }

  /**
   * The driver applied a final commit: the new version becomes visible and the lock is released.
   * Returns the `applied` record for the log (it may be written lazily: a restart that does not find
   * it applies the transaction again, idempotently, before anything else touches the repo).
   */
  onCommitted(txnId: string): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (rec?.status !== 'committing' || !rec.op) return [];
    rec.status = 'committed';
    this.setRepo(rec.op, rec.epoch ?? 0, rec.generation ?? 0);
    this.unlock(rec.op.repoId, txnId);
    return [{ type: 'persist', entry: { t: 'applied', txnId } }];
  }

  /**
   * Applying a final commit failed. A create or delete stays `committing` and is applied again by
   * the driver's recovery round. A push whose refs cannot be moved (objects missing, refs diverged)
   * leaves this replica at its old generation: it is behind, releases the lock, and catch-up repairs
   * it from an up-to-date peer.
   */
  onApplyFailed(txnId: string): void {
    const rec = this.txns.get(txnId);
    if (rec?.status !== 'committing' || !rec.op) return;
    if (rec.op.kind !== 'push') return;
    rec.status = 'committed';
    rec.applyFailed = true;
    this.unlock(rec.op.repoId, txnId);
  }

  /** Staging or logging failed: release the lock, undo what was staged, vote no. */
  onPrepareFailed(txnId: string): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (rec?.status === 'aborted' && rec.op) return [{ type: 'discard', txnId, op: rec.op }, { type: 'reply', vote: { vote: 'no', code: 'stage_failed' } }];
    if (rec?.status !== 'preparing' || !rec.op) return [];
    this.txns.delete(txnId);
    this.unlock(rec.op.repoId, txnId);
    return [{ type: 'discard', txnId, op: rec.op }, { type: 'reply', vote: { vote: 'no', code: 'stage_failed' } }];
  }

  /**
   * A commit decision at `version`. Not `final`: accepted (logged) and nothing applied. Final: logged
   * as committed, then applied; the repo stays locked and its version unchanged until the driver has
   * applied it (onCommitted). Refused when this node promised a recovering node never to accept it,
   * or when the version does not follow this replica's own.
   */
  onCommit(txnId: string, epoch: number, generation = 0, final = true, acceptors?: NodeId[]): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    const no = (code: NoVoteCode, detail?: string): ParticipantEffect[] => [
      { type: 'reply', vote: { vote: 'no', code, ...(detail === undefined ? {} : { detail }) } },
    ];
    if (!rec) {
      // Never prepared here (or forgotten): a promise not to accept it, kept so the answer stays the same.
      this.txns.set(txnId, { status: 'refused' });
      return [{ type: 'persist', entry: { t: 'refused', txnId } }, ...no('refused')];
    }
    if (rec.status === 'refused' || rec.status === 'aborted') return no('refused');
    if (rec.status === 'preparing') return no('repo_busy');
    if (rec.status === 'committed' || rec.status === 'committing') {
      // A re-sent commit is acknowledged only if this replica applied it, with the version it applied.
      if (rec.status === 'committing') return [];
      if (rec.applyFailed || rec.epoch !== epoch || rec.generation !== generation) return no('stage_failed');
      return [{ type: 'reply', vote: { vote: 'yes', epoch, generation } }];
    }
    if (!rec.op) return no('refused');
    const problem = this.commitProblem(rec.op, this.versionOf(rec.op.repoId), { epoch, generation }, this.repos.get(rec.op.repoId)?.settingsVersion ?? 0);
    if (problem !== undefined) return no('stale', problem);
    if (rec.status === 'accepted' && (rec.epoch !== epoch || rec.generation !== generation)) return no('stale', 'accepted another version');
    const named = acceptors ?? rec.acceptors;
    const withAcceptors = named ? { acceptors: named } : {};
    if (!final) {
      if (rec.status === 'accepted') return [{ type: 'reply', vote: { vote: 'yes', epoch, generation } }];
      Object.assign(rec, { status: 'accepted', epoch, generation }, withAcceptors);
      return [
        { type: 'persist', entry: { t: 'accepted', txnId, epoch, generation, ...withAcceptors } },
        { type: 'reply', vote: { vote: 'yes', epoch, generation } },
      ];
    }
    Object.assign(rec, { status: 'committing', epoch, generation }, withAcceptors);
    return [
      { type: 'persist', entry: { t: 'committed', txnId, epoch, generation, ...withAcceptors } },
      { type: 'apply', txnId, op: rec.op, epoch, generation, coordinator: rec.coordinator ?? '' },
      { type: 'reply', vote: { vote: 'yes', epoch, generation } },
    ];
  }

  /** Why a commit of `op` at `version` cannot be applied to a replica at `current` (see commitVersionProblem). */
  protected commitProblem(op: TxnOp, current: RepoVersion, version: RepoVersion, currentSettingsVersion = 0): string | undefined {
    return commitVersionProblem(op, current, version, currentSettingsVersion);
  }

  /** The recovery conversation for a transaction this node cannot settle alone (see Recovery). */
  recovery(txn: { txnId: string; op: TxnOp; coordinator: NodeId; ownDecision?: boolean }, cluster: ClusterView): Recovery {
    return new Recovery(this, txn, cluster);
  }

  /**
   * Recovery proved abort for a transaction in doubt here. If it is our own and we had decided commit,
   * that decision was never final: the log answers abort from now on.
   */
  onRecoveredAbort(txnId: string): ParticipantEffect[] {
    const own = this.decisions.get(txnId)?.outcome === 'commit' ? this.onDecisionSettled(txnId, 'abort') : [];
    return [...own, ...this.onAbort(txnId)];
  }

  /** The outcome is abort (the coordinator's decision, or proven by recovery). */
  onAbort(txnId: string): ParticipantEffect[] {
    const rec = this.txns.get(txnId);
    if (!rec) {
      // An abort that overtook its prepare (the node was paused): remembered, so the prepare is refused.
      this.txns.set(txnId, { status: 'aborted' });
      return [{ type: 'persist', entry: { t: 'aborted', txnId } }];
    }
    if (rec.status === 'aborted' || rec.status === 'committed' || rec.status === 'committing') return [];
    // An abort that overtakes our own prepare (still staging) leaves the staging to the driver, which
    // discards it once the stage step is done and never logs `prepared` after this `aborted`.
    const staging = rec.status === 'preparing';
    const held = rec.status === 'prepared' || rec.status === 'accepted' || staging;
    rec.status = 'aborted';
    if (rec.op) this.unlock(rec.op.repoId, txnId);
    return [...(rec.op && held && !staging ? [{ type: 'discard', txnId, op: rec.op } as const] : []), { type: 'persist', entry: { t: 'aborted', txnId } }];
  }

  /**
   * Another node asks what we know of a transaction. With `refuse` (a node recovering it without its
   * coordinator), a transaction we never prepared, or prepared without accepting a commit, is refused
   * for good (logged before answering): we will never accept its commit, which is what lets N - W + 1
   * refusals prove an abort.
   */
  onQuery(txnId: string, refuse: boolean): QueryAnswer {
    const rec = this.txns.get(txnId);
    if (rec?.status === 'committing' || rec?.status === 'committed') return { outcome: 'committed', ...versionFields(rec), effects: [] };
    if (rec?.status === 'accepted') return { outcome: 'accepted', ...versionFields(rec), effects: [] };
    const decision = this.decisions.get(txnId);
    if (decision?.outcome === 'commit') return { outcome: 'accepted', ...versionFields(decision), effects: [] };
    if (decision?.outcome === 'abort') return { outcome: 'aborted', effects: [] };
    if (rec) {
      if (rec.status === 'preparing') return { outcome: 'pending', effects: [] };
      if (rec.status === 'aborted' || rec.status === 'refused') return { outcome: rec.status, effects: [] };
      // prepared
      if (!refuse) return { outcome: 'prepared', effects: [] };
      rec.status = 'refused';
      if (rec.op) this.unlock(rec.op.repoId, txnId);
      return {
        outcome: 'refused',
        effects: [...(rec.op ? [{ type: 'discard', txnId, op: rec.op } as const] : []), { type: 'persist', entry: { t: 'refused', txnId } }],
      };
    }
    if (!refuse) return { outcome: 'pending', effects: [] };
    this.txns.set(txnId, { status: 'refused' });
    return { outcome: 'refused', effects: [{ type: 'persist', entry: { t: 'refused', txnId } }] };
  }

  /** What this node holds of `repoId` beside transaction `txnId` (see RepoFacts). */
  repoFacts(repoId: string, txnId: string): RepoFacts {
    const entry = this.repos.get(repoId);
    const holder = this.locks.get(repoId);
    const other = holder === txnId ? undefined : holder;
    const status = other === undefined ? undefined : this.txns.get(other)?.status;
    const held = status === 'accepted' || status === 'committing' || (other !== undefined && this.decisions.get(other)?.outcome === 'commit');
    return { epoch: entry?.epoch ?? 0, generation: entry?.generation ?? 0, settingsVersion: entry?.settingsVersion ?? 0, held };
  }

  /**
   * The question asked of the coordinator about its own transaction. Still running here: wait for it.
   * A commit decision it holds but cannot show final is reported as accepted (the asker counts it).
   * With no decision logged and the transaction no longer running (we restarted, or gave up on it), it
   * never sent a commit, so no node can have accepted one: log the abort first so the answer is final
   * (presumed abort).
   */
  onCoordinatorQuery(txnId: string, stillRunning: boolean): QueryAnswer {
    const rec = this.txns.get(txnId);
    if (rec?.status === 'committing' || rec?.status === 'committed') return { outcome: 'committed', ...versionFields(rec), effects: [] };
    const decision = this.decisions.get(txnId);
    if (decision?.outcome === 'abort') return { outcome: 'aborted', effects: [] };
    if (stillRunning) return { outcome: 'pending', effects: [] };
    if (decision?.outcome === 'commit') return { outcome: 'accepted', ...versionFields(decision), effects: [] };
    const op = rec?.op ?? { kind: 'create', repoId: '' };
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
    const theirSettings = theirs.state === 'live' && theirs.settings !== undefined ? { settings: theirs.settings, settingsVersion: theirs.settingsVersion ?? 0 } : {};
    if (ours !== undefined && ours.epoch === theirs.epoch && ours.state === 'live' && theirs.state === 'live' && theirs.settings !== undefined && (theirs.settingsVersion ?? 0) > (ours.settingsVersion ?? 0)) {
      // Same incarnation, newer settings: a settings commit we missed (down, or not among the voters).
      const updated: CatalogEntry = { ...ours, ...theirSettings };
      this.repos.set(repoId, updated);
      return [{ type: 'persist', entry: { t: 'synced', repoId, ...updated } }];
    }
    if (ours !== undefined && ours.epoch >= theirs.epoch) return [];
    // A newer incarnation: adopted as an empty repo at generation 0; its pushes come by catch-up, its
    // settings with it.
    const adopted: CatalogEntry = { state: theirs.state, epoch: theirs.epoch, generation: 0, ...theirSettings };
    this.repos.set(repoId, adopted);
    return [
      { type: 'sync', repoId, from: ours, to: adopted },
      { type: 'persist', entry: { t: 'synced', repoId, ...adopted } },
    ];
  }

  /**
   * Catch-up finished: this replica's refs now equal a peer's at `version`. Refused when a
   * transaction took the repo meanwhile or we are no longer behind.
   */
  onCaughtUp(repoId: string, version: RepoVersion): ParticipantEffect[] {
    const ours = this.repos.get(repoId);
    if (this.locks.has(repoId) || ours?.state !== 'live' || ours.epoch !== version.epoch || ours.generation >= version.generation) return [];
    const caughtUp: CatalogEntry = { ...ours, state: 'live', ...version };
    this.repos.set(repoId, caughtUp);
    return [{ type: 'persist', entry: { t: 'synced', repoId, ...caughtUp } }];
  }

  /** Our copy of a live repo was lost (found missing on disk): back to generation 0, behind every peer. */
  onRepoLost(repoId: string): ParticipantEffect[] {
    const ours = this.repos.get(repoId);
    if (ours?.state !== 'live' || ours.generation === 0) return [];
    const reset: CatalogEntry = { ...ours, state: 'live', epoch: ours.epoch, generation: 0 };
    this.repos.set(repoId, reset);
    return [{ type: 'persist', entry: { t: 'synced', repoId, ...reset } }];
  }

  /**
   * A checkpoint of everything recovery needs, as log entries that rebuild this state when replayed:
   * the catalog, every transaction not settled here (prepared, accepted, committed but not known
   * applied) and every commit decision of ours not known final; of the settled ones (and abort
   * decisions) the `retainSettled` most recent are kept, so a late question about them (a node that
   * was down, a duplicate prepare) still gets the same answer. Older settled records are dropped from
   * memory too: the log and the maps stay bounded on a node that runs for years. A node that stays
   * down through more than `retainSettled` later transactions and asks about an old one then finds no
   * record: it is treated as refused, which at worst aborts a transaction on a replica that never
   * applied it (it is then behind, and catches up).
   */
  checkpoint(retainSettled: number): LogEntry[] {
    const entries: LogEntry[] = [];
    for (const node of this.dead) entries.push({ t: 'member', node, dead: true });
    for (const [repoId, entry] of this.repos) entries.push({ t: 'synced', repoId, ...entry });
    const settled: string[] = [];
    for (const [txnId, rec] of this.txns) {
      if ((rec.status === 'preparing' || rec.status === 'prepared' || rec.status === 'accepted' || rec.status === 'committing') && rec.op) {
        entries.push({ t: 'prepared', txnId, op: rec.op, coordinator: rec.coordinator ?? '' });
        const acceptors = rec.acceptors ? { acceptors: rec.acceptors } : {};
        if (rec.status === 'accepted') entries.push({ t: 'accepted', txnId, epoch: rec.epoch ?? 0, generation: rec.generation ?? 0, ...acceptors });
        if (rec.status === 'committing') entries.push({ t: 'committed', txnId, epoch: rec.epoch ?? 0, generation: rec.generation ?? 0, ...acceptors });
      } else if (rec.status !== 'preparing') {
        settled.push(txnId);
      }
    }
    const keepSettled = new Set(settled.slice(Math.max(0, settled.length - retainSettled)));
    for (const txnId of settled) {
      const rec = this.txns.get(txnId)!;
      if (!keepSettled.has(txnId)) {
        this.txns.delete(txnId);
        continue;
      }
      if (rec.status === 'committed') {
        // Without its op: the replayed record answers queries, it moves nothing (the catalog above has
        // the version). One this replica failed to apply is left out: asked again, it refuses.
        if (!rec.applyFailed) entries.push({ t: 'committed', txnId, epoch: rec.epoch ?? 0, generation: rec.generation ?? 0 });
      } else if (rec.status === 'aborted' || rec.status === 'refused') {
        entries.push({ t: rec.status, txnId });
      }
    }
    const unsettled = new Set(this.unsettledDecisions().map((d) => d.txnId));
    const decisionIds = [...this.decisions.keys()];
    const recent = new Set(decisionIds.slice(Math.max(0, decisionIds.length - retainSettled)));
    for (const txnId of decisionIds) {
      const d = this.decisions.get(txnId)!;
      const ownOpen = this.txns.get(txnId);
      const needed = unsettled.has(txnId) || (ownOpen !== undefined && ownOpen.status !== 'committed' && ownOpen.status !== 'aborted' && ownOpen.status !== 'refused');
      if (!needed && !recent.has(txnId)) {
        this.decisions.delete(txnId);
        continue;
      }
      entries.push({
        t: 'decision',
        txnId,
        outcome: d.outcome,
        op: d.op ?? { kind: 'create', repoId: '' },
        ...(d.epoch === undefined ? {} : { epoch: d.epoch }),
        ...(d.generation === undefined ? {} : { generation: d.generation }),
        ...(d.acceptors === undefined ? {} : { acceptors: d.acceptors }),
      });
    }
    return entries;
  }

  /** The version this replica has applied: what the 2PC checks a push's base against. */
  versionOf(repoId: string): RepoVersion {
    const entry = this.repos.get(repoId);
    return { epoch: entry?.epoch ?? 0, generation: entry?.generation ?? 0 };
  }

  /**
   * The version a read check must be told: a final commit still being applied here counts (a reader
   * served here waits for the apply, see `applying`), so a push acknowledged a moment ago is never
   * reported as not there yet.
   */
  readVersion(repoId: string): RepoVersion {
    const holder = this.locks.get(repoId);
    const rec = holder === undefined ? undefined : this.txns.get(holder);
    if (rec?.status === 'committing' && rec.op?.kind === 'push') return { epoch: rec.epoch ?? 0, generation: rec.generation ?? 0 };
    return this.versionOf(repoId);
  }

  /** The transaction whose final commit this replica is applying to the repo, if any. */
  applying(repoId: string): string | undefined {
    const holder = this.locks.get(repoId);
    return holder !== undefined && this.txns.get(holder)?.status === 'committing' ? holder : undefined;
  }

  private setRepo(op: TxnOp, epoch: number, generation: number): void {
    const current = this.repos.get(op.repoId);
    if (op.kind === 'settings') {
      // `generation` is the new settings version; the refs' version stays.
      if (current?.state !== 'live' || current.epoch !== epoch || (current.settingsVersion ?? 0) >= generation) return;
      this.repos.set(op.repoId, { ...current, settings: op.settings, settingsVersion: generation });
      return;
    }
    if (current && compareVersions(current, { epoch, generation }) >= 0) return;
    const kept = current?.settings === undefined ? {} : { settings: current.settings, settingsVersion: current.settingsVersion ?? 0 };
    if (op.kind === 'push') this.repos.set(op.repoId, { state: 'live', epoch, generation, ...kept });
    else if (op.kind === 'create') this.repos.set(op.repoId, { state: 'live', epoch, generation: 0, ...(op.settings === undefined ? {} : { settings: op.settings, settingsVersion: 0 }) });
    else this.repos.set(op.repoId, { state: 'deleted', epoch, generation: 0 });
  }

  private unlock(repoId: string, txnId: string): void {
    if (this.locks.get(repoId) === txnId) this.locks.delete(repoId);
  }
}

/**
 * Two refs of which one names a directory of the other (refs/heads/x, refs/heads/x/y) cannot both
 * exist, and git cannot delete one and create the other in one transaction. A push that touches such
 * a pair is refused at prepare, where every replica at the base version sees the same refs and so
 * refuses alike: at commit it would fail on the replicas (one update-ref transaction) while the
 * coordinator's receive-pack, moving the refs of a non-atomic push one by one, might apply some,
 * leaving the replicas apart. Returns the clashing pair, or undefined.
 */
export function refNameClash(updates: readonly RefUpdate[], refs: Readonly<Record<string, string>>): string | undefined {
  const names = new Set([...Object.keys(refs), ...updates.map((u) => u.ref)]);
  // Every directory some ref lives in, with one ref under it.
  const dirs = new Map<string, string>();
  for (const name of names) {
    for (let i = name.indexOf('/'); i !== -1; i = name.indexOf('/', i + 1)) {
      const dir = name.slice(0, i);
      if (!dirs.has(dir)) dirs.set(dir, name);
    }
  }
  for (const { ref } of updates) {
    const under = dirs.get(ref);
    if (under !== undefined) return `${ref} and ${under}`;
    for (let i = ref.indexOf('/'); i !== -1; i = ref.indexOf('/', i + 1)) {
      if (names.has(ref.slice(0, i))) return `${ref} and ${ref.slice(0, i)}`;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Recovery: what a participant holding `prepared` may conclude from the answers it gathered.

export type PeerAnswer = QueryOutcome | 'unreachable';

/**
 * What a node holding a transaction in doubt may conclude from the answers it gathered. `self` is
 * its own state: `accepted` counts towards commit, `prepared` towards abort (it refuses too if the
 * verdict is abort), `counted` when its own state is already among the answers (the coordinator asking
 * about its own transaction). See the rules at the top of this file.
 */
export function resolveInDoubt(
  answers: {
    coordinator: PeerAnswer;
    peers: PeerAnswer[];
    self?: 'prepared' | 'accepted' | 'counted';
    /**
     * When some answer (or our own record) named the decision's acceptors: the set, and which node gave
     * each answer (`peerIds` in the order of `peers`), so refusals and acceptances are counted among them.
     */
    acceptors?: readonly NodeId[];
    ids?: { coordinator: NodeId; peers: readonly NodeId[]; self: NodeId };
    /**
     * Nodes declared dead for good (never asked, their answers void). With `ids`, once every other
     * node answered, the live nodes' records decide (see the rules at the top of this file).
     */
    dead?: readonly NodeId[];
    /**
     * A live node that answered holds the repo past this transaction's base, or holds another
     * transaction on it with an acceptance: the repo moved on without this transaction, so the
     * live nodes' records must not commit it (see the rules at the top of this file).
     */
    movedOn?: boolean;
  },
  clusterSize: number,
  quorum: number,
): 'commit' | 'abort' | 'wait' {
  const all = [answers.coordinator, ...answers.peers];
  const self = answers.self ?? 'prepared';
  if (all.includes('committed')) return 'commit';
  if (all.includes('aborted')) return 'abort';
  // Acceptances count only from the decision's acceptors when they are known: no other node can make
  // the commit final (the coordinator asks only them to accept).
  const { acceptors, ids } = answers;
  const members = acceptors && ids ? new Set(acceptors) : undefined;
  const counts = (id: NodeId | undefined): boolean => members === undefined || id === undefined || members.has(id);
  let accepts =
    (answers.coordinator === 'accepted' && counts(ids?.coordinator) ? 1 : 0) +
    answers.peers.filter((a, i) => a === 'accepted' && counts(ids?.peers[i])).length +
    (self === 'accepted' && counts(ids?.self) ? 1 : 0);
  // A commit accepted anywhere was sent by a coordinator that had logged it: its log is one more.
  if (answers.coordinator !== 'accepted' && self !== 'counted' && accepts > 0) accepts += 1;
  if (accepts >= quorum) return 'commit';
  const refusals = all.filter((a) => a === 'refused').length + (self === 'prepared' ? 1 : 0);
  if (refusals >= clusterSize - quorum + 1) return 'abort';
  // Only the acceptors can ever accept: once more than |acceptors| - W of them refused, fewer than W
  // are left, whatever the nodes that never voted (dead ones included) would say.
  if (members && ids) {
    let refusedMembers = answers.peers.filter((a, i) => a === 'refused' && members.has(ids.peers[i]!)).length;
    if (answers.coordinator === 'refused' && members.has(ids.coordinator)) refusedMembers += 1;
    if (self === 'prepared' && members.has(ids.self)) refusedMembers += 1;
    if (refusedMembers > members.size - quorum) return 'abort';
  }
  const dead = new Set(answers.dead ?? []);
  if (ids && dead.size > 0 && dead.size <= clusterSize - quorum && !dead.has(ids.self)) {
    // Every live node but us answered (the coordinator's answer counts unless it is dead or us).
    const heard = new Set<NodeId>();
    if (ids.coordinator !== ids.self && !dead.has(ids.coordinator) && answers.coordinator !== 'unreachable') heard.add(ids.coordinator);
    answers.peers.forEach((a, i) => {
      const id = ids.peers[i]!;
      if (a !== 'unreachable' && !dead.has(id) && id !== ids.self) heard.add(id);
    });
    if (heard.size === clusterSize - 1 - dead.size) {
      const coordinatorLive = !dead.has(ids.coordinator);
      const liveAcceptance =
        (self === 'accepted' && counts(ids.self)) ||
        (coordinatorLive && answers.coordinator === 'accepted' && counts(ids.coordinator)) ||
        answers.peers.some((a, i) => a === 'accepted' && !dead.has(ids.peers[i]!) && counts(ids.peers[i]));
      return liveAcceptance && answers.movedOn !== true ? 'commit' : 'abort';
    }
  }
  return 'wait';
}

/**
 * Why `node` may not be declared dead for good in a cluster of `nodes` whose nodes `dead` already are,
 * or undefined when it may: never the node asked (it is alive), never an unknown id, and never more
 * than N - W nodes in all, or an acknowledged push might live only on declared nodes.
 */
export function deathDeclarationProblem(node: NodeId, cluster: { self: NodeId; nodes: readonly NodeId[]; quorum: number }, dead: readonly NodeId[]): string | undefined {
  if (!cluster.nodes.includes(node)) return `${node} is not a node of this cluster (${cluster.nodes.join(', ')})`;
  if (node === cluster.self) return `${node} is the node asked, and it is alive`;
  const after = new Set([...dead, node]);
  const most = cluster.nodes.length - cluster.quorum;
  if (after.size > most) return `at most ${most} of ${cluster.nodes.length} nodes may be declared dead (W = ${cluster.quorum}); already declared: ${[...dead].join(', ') || 'none'}`;
  return undefined;
}

/** An answer to a recovery question: what the node holds (or that it could not be reached). */
export type RecoveryAnswer = { outcome: QueryOutcome; epoch?: number; generation?: number; acceptors?: NodeId[]; repo?: RepoFacts } | 'unreachable';

/** The next thing recovery needs: a question to one node, or its conclusion. */
export type RecoveryStep =
  | { type: 'ask'; node: NodeId; asCoordinator: boolean; refuse: boolean }
  | { type: 'commit'; version: RepoVersion }
  | { type: 'abort' }
  /** Nothing proven yet (or the transaction moved on while we asked): try again next round. */
  | { type: 'wait' };

export interface ClusterView {
  self: NodeId;
  nodes: readonly NodeId[];
  quorum: number;
}

/**
 * Recovery of one transaction this node cannot settle alone, as a pure conversation: `next()` says
 * whom to ask (the driver asks and hands the answer to `onAnswer`) until it returns a conclusion.
 *
 * - In doubt here (prepared or accepted): the coordinator is asked first, as coordinator. While it
 *   still runs the transaction ("pending") we wait for its commit or abort; if it answers the outcome,
 *   that is the outcome. Otherwise every other node is asked, in cluster order, with `refuse`: each
 *   answers what it holds and, unless it accepted the commit, promises never to accept it. Then
 *   `resolveInDoubt` judges. A commit is applied at the version an answer gave or, for a push, at
 *   the one its operation gives (base + 1).
 * - A commit decision of our own not known final (we hold no replica in it): every peer is asked with
 *   `refuse`, our log counting as the coordinator's acceptance.
 * Nodes declared dead for good are skipped (the coordinator too, when it is one of them).
 * If our own record moved while we asked (a commit or abort arrived), the conclusion is `wait`: the
 * next round finds nothing to do.
 */
export class Recovery {
  private phase: 'coordinator' | 'peers' | 'done';
  protected coordinatorAnswer: PeerAnswer;
  protected readonly askIds: NodeId[];
  protected readonly answers: PeerAnswer[] = [];
  private version: RepoVersion | undefined;
  private acceptors: NodeId[] | undefined;
  /** What each node that answered holds of the repo (when it said), by node. */
  private readonly facts = new Map<NodeId, RepoFacts>();

  constructor(
    protected readonly participant: Participant,
    protected readonly txn: { txnId: string; op: TxnOp; coordinator: NodeId; ownDecision?: boolean },
    protected readonly cluster: ClusterView,
  ) {
    const { self, nodes } = cluster;
    this.acceptors = participant.acceptorsOf(txn.txnId);
    // Nodes declared dead for good are never asked: their records are void.
    const live = nodes.filter((n) => !participant.isDead(n));
    if (txn.ownDecision) {
      this.phase = 'peers';
      this.coordinatorAnswer = 'accepted';
      this.askIds = live.filter((n) => n !== self);
    } else {
      this.phase = participant.isDead(txn.coordinator) ? 'peers' : 'coordinator';
      this.coordinatorAnswer = 'unreachable';
      this.askIds = live.filter((n) => n !== txn.coordinator && n !== self);
    }
  }

  get txnId(): string {
    return this.txn.txnId;
  }

  /** The transaction's repo: named in every question, so each answer says what its node holds of it. */
  get repoId(): string {
    return this.txn.op.repoId;
  }

  /** What the answers gathered so far hold, for the log line. */
  get gathered(): { coordinator: PeerAnswer; peers: PeerAnswer[]; acceptors?: NodeId[] } {
    return { coordinator: this.coordinatorAnswer, peers: [...this.answers], ...(this.acceptors ? { acceptors: this.acceptors } : {}) };
  }

  next(): RecoveryStep {
    if (this.phase === 'coordinator') return { type: 'ask', node: this.txn.coordinator, asCoordinator: true, refuse: false };
    if (this.phase === 'peers' && this.answers.length < this.askIds.length) {
      return { type: 'ask', node: this.askIds[this.answers.length]!, asCoordinator: false, refuse: true };
    }
    this.phase = 'done';
    return this.conclude();
  }

  onAnswer(answer: RecoveryAnswer): void {
    const outcome: PeerAnswer = answer === 'unreachable' ? 'unreachable' : answer.outcome;
    if (answer !== 'unreachable') {
      if ((outcome === 'committed' || outcome === 'accepted') && answer.epoch !== undefined) {
        this.version = { epoch: answer.epoch, generation: answer.generation ?? 0 };
      }
      if (answer.acceptors) this.acceptors = answer.acceptors;
      const node = this.phase === 'coordinator' ? this.txn.coordinator : this.askIds[this.answers.length];
      if (answer.repo && node !== undefined) this.facts.set(node, answer.repo);
    }
    if (this.phase === 'coordinator') {
      this.coordinatorAnswer = outcome;
      // Still running at the coordinator (its answer is coming), or decided there: no one else to ask.
      this.phase = outcome === 'pending' || outcome === 'committed' || outcome === 'aborted' || this.moved() ? 'done' : 'peers';
      return;
    }
    this.answers.push(outcome);
  }

  /** Our own record left doubt while we asked. */
  protected moved(): boolean {
    if (this.txn.ownDecision) return false;
    const status = this.participant.status(this.txn.txnId);
    return status !== 'prepared' && status !== 'accepted';
  }

  protected conclude(): RecoveryStep {
    if (this.coordinatorAnswer === 'pending' || this.moved()) return { type: 'wait' };
    const { self, nodes, quorum } = this.cluster;
    const own = this.txn.ownDecision === true || this.txn.coordinator === self;
    const status = this.participant.status(this.txn.txnId);
    const selfState = own ? 'counted' : status === 'accepted' ? 'accepted' : 'prepared';
    const coordinatorId = this.txn.ownDecision ? self : this.txn.coordinator;
    const peers = this.phase === 'done' && this.answers.length > 0 ? this.askIds.slice(0, this.answers.length) : [];
    const ids = { coordinator: coordinatorId, peers, self };
    const dead = this.participant.deadNodes();
    const { op } = this.txn;
    const decided = this.txn.ownDecision ? this.participant.decision(this.txn.txnId) : undefined;
    const fromDecision = decided?.epoch === undefined ? undefined : { epoch: decided.epoch, generation: decided.generation ?? 0 };
    const fromOp =
      op.kind === 'push'
        ? { epoch: op.base.epoch, generation: op.base.generation + 1 }
        : op.kind === 'settings'
          ? { epoch: op.base.epoch, generation: op.base.settingsVersion + 1 }
          : undefined;
    // A create or delete accepted here carries its epoch in our own record.
    const version = fromDecision ?? this.version ?? this.participant.acceptedVersion(this.txn.txnId) ?? fromOp;
    const movedOn = [...this.facts].some(([node, facts]) => node !== self && !dead.includes(node) && movedPast(op, facts, version));
    const verdict = resolveInDoubt(
      {
        coordinator: this.coordinatorAnswer,
        peers: this.answers,
        self: selfState,
        ...(this.acceptors ? { acceptors: this.acceptors, ids } : {}),
        ...(dead.length > 0 ? { dead, ids, movedOn } : {}),
      },
      nodes.length,
      quorum,
    );
    if (verdict === 'abort') return { type: 'abort' };
    if (verdict === 'wait') return { type: 'wait' };
    return version === undefined ? { type: 'wait' } : { type: 'commit', version };
  }
}

/**
 * A node holding `facts` of the repo is past what `op` builds on (a push's or a settings change's
 * base; a create's or delete's epoch `version`, when known), or holds another transaction on it with
 * an acceptance: committing `op` there would give a second history at one version.
 */
export function movedPast(op: TxnOp, facts: RepoFacts, version: RepoVersion | undefined): boolean {
  if (facts.held) return true;
  if (op.kind === 'push') return compareVersions(facts, op.base) > 0;
  if (op.kind === 'settings') return facts.epoch > op.base.epoch || (facts.epoch === op.base.epoch && facts.settingsVersion > op.base.settingsVersion);
  return version !== undefined && facts.epoch >= version.epoch;
}
