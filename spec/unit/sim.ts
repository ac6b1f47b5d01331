// A deterministic in-memory cluster for the pure 2PC core: a fake transport (a queue of envelopes that
// a spec delivers, drops or duplicates), a manual clock, per-node logs that survive a crash while the
// in-memory state does not, and a seeded random order of delivery. Nothing here sleeps.

import {
  ZERO_OID,
  CoordinatorTxn,
  Participant,
  resolveInDoubt,
  type CoordinatorEffect,
  type CoordinatorResult,
  type LogEntry,
  type NodeId,
  type ParticipantEffect,
  type PeerAnswer,
  type TxnMessage,
  type TxnOp,
  type Vote,
} from '../../lib/txn-core.js';

export type Envelope =
  | { kind: 'msg'; from: NodeId; to: NodeId; txnId: string; msg: TxnMessage }
  | { kind: 'reply'; from: NodeId; to: NodeId; txnId: string; about: TxnMessage['type']; vote: Vote; final?: boolean };

interface SimNode {
  id: NodeId;
  up: boolean;
  participant: Participant;
  log: LogEntry[];
  staged: Set<string>;
  applied: string[];
  /** The replica's refs per repo, moved by applied pushes (the fake of git's ref store). */
  refs: Map<string, Record<string, string>>;
}

interface Timer {
  at: number;
  txnId: string;
  name: 'prepare' | 'commit';
}

export class ManualClock {
  now = 0;
}

/** Mulberry32: a small seeded PRNG so a failing order can be replayed from its seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Sim {
  readonly clock = new ManualClock();
  readonly nodes = new Map<NodeId, SimNode>();
  readonly queue: Envelope[] = [];
  readonly results = new Map<string, CoordinatorResult>();
  /** Every effect carried out, in order, as `node:effect`: specs check persist-before-send from it. */
  readonly trace: string[] = [];
  private readonly coordinators = new Map<string, { coord: CoordinatorTxn; node: NodeId }>();
  private readonly timers: Timer[] = [];
  private nextId = 0;
  readonly quorum: number;

  constructor(ids: NodeId[], quorum: number, readonly timeouts = { prepareTimeoutMs: 100, commitTimeoutMs: 100, commitResends: 2 }) {
    this.quorum = quorum;
    for (const id of ids) this.nodes.set(id, { id, up: true, participant: new Participant(), log: [], staged: new Set(), applied: [], refs: new Map() });
  }

  node(id: NodeId): SimNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  begin(coordinator: NodeId, op: TxnOp): string {
    const txnId = `t${(this.nextId += 1)}`;
    const coord = new CoordinatorTxn({ txnId, op, self: coordinator, nodes: [...this.nodes.keys()], quorum: this.quorum, ...this.timeouts });
    this.coordinators.set(txnId, { coord, node: coordinator });
    this.runCoordinator(txnId, coord.start());
    return txnId;
  }

  /** Delivers queued envelopes until none is left. `pick` chooses which one goes next. */
  run(options: { drop?: (e: Envelope) => boolean; duplicate?: (e: Envelope) => boolean; pick?: (n: number) => number } = {}): void {
    for (let guard = 0; this.queue.length > 0; guard += 1) {
      if (guard > 10_000) throw new Error('simulation did not settle');
      const index = options.pick ? options.pick(this.queue.length) : 0;
      const [envelope] = this.queue.splice(index, 1);
      if (!envelope || options.drop?.(envelope)) continue;
      this.deliver(envelope);
      if (options.duplicate?.(envelope)) this.deliver(envelope);
    }
  }

  /** Moves the manual clock and fires due timers (then delivers what they sent, with the same options). */
  advance(ms: number, options: Parameters<Sim['run']>[0] = {}): void {
    const until = this.clock.now + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers[0];
      if (!next || next.at > until) break;
      this.timers.shift();
      this.clock.now = next.at;
      const entry = this.coordinators.get(next.txnId);
      if (entry && this.node(entry.node).up) this.runCoordinator(next.txnId, entry.coord.onTimer(next.name));
      this.run(options);
    }
    this.clock.now = until;
  }

  /** Loses the node's memory (and its running coordinators); its log survives. */
  crash(id: NodeId): void {
    const n = this.node(id);
    n.up = false;
    for (const [txnId, entry] of this.coordinators) if (entry.node === id) this.coordinators.delete(txnId);
  }

  restart(id: NodeId): void {
    const n = this.node(id);
    n.participant = new Participant();
    for (const entry of n.log) n.participant.replay(entry);
    n.up = true;
  }

  /** One round of recovery for every transaction `id` holds in doubt; returns the verdicts. */
  recover(id: NodeId): Record<string, 'commit' | 'abort' | 'wait'> {
    const n = this.node(id);
    const verdicts: Record<string, 'commit' | 'abort' | 'wait'> = {};
    for (const txn of n.participant.inDoubt()) {
      let epoch: number | undefined;
      let generation = 0;
      const ask = (node: NodeId, asCoordinator: boolean): PeerAnswer => {
        const target = this.node(node);
        if (!target.up) return 'unreachable';
        const answer = asCoordinator
          ? target.participant.onCoordinatorQuery(txn.txnId, this.coordinators.has(txn.txnId))
          : target.participant.onQuery(txn.txnId, true);
        this.runParticipant(target, txn.txnId, answer.effects);
        if (answer.epoch !== undefined) epoch = answer.epoch;
        if (answer.generation !== undefined) generation = answer.generation;
        return answer.outcome;
      };
      const coordinator = ask(txn.coordinator, true);
      if (coordinator === 'pending') {
        verdicts[txn.txnId] = 'wait';
        continue;
      }
      const peers =
        coordinator === 'committed' || coordinator === 'aborted'
          ? []
          : [...this.nodes.keys()].filter((p) => p !== txn.coordinator && p !== id).map((p) => ask(p, false));
      const self = txn.coordinator === id ? 'counted' : txn.status;
      const verdict = resolveInDoubt({ coordinator, peers, self }, this.nodes.size, this.quorum);
      verdicts[txn.txnId] = verdict;
      if (verdict === 'commit') {
        if (epoch === undefined && txn.op.kind === 'push') [epoch, generation] = [txn.op.base.epoch, txn.op.base.generation + 1];
        if (epoch !== undefined) {
          this.runParticipant(n, txn.txnId, n.participant.onCommit(txn.txnId, epoch, generation, true));
          this.runParticipant(n, txn.txnId, n.participant.onCommitted(txn.txnId));
        }
      }
      if (verdict === 'abort') {
        if (txn.coordinator === id && n.participant.decision(txn.txnId)?.outcome === 'commit') {
          n.participant.recordDecision(txn.txnId, 'abort');
          n.log.push({ t: 'decision', txnId: txn.txnId, outcome: 'abort', op: txn.op });
        }
        this.runParticipant(n, txn.txnId, n.participant.onAbort(txn.txnId));
      }
    }
    return verdicts;
  }

  /** Anti-entropy from every node that is up. */
  sync(id: NodeId): void {
    const n = this.node(id);
    for (const peer of this.nodes.values()) {
      if (peer.id === id || !peer.up) continue;
      for (const [repoId, entry] of Object.entries(peer.participant.catalog())) {
        this.runParticipant(n, `sync:${repoId}`, n.participant.onPeerState(repoId, entry));
      }
    }
  }

  private deliver(envelope: Envelope): void {
    const target = this.node(envelope.to);
    if (!target.up) return;
    if (envelope.kind === 'reply') {
      const entry = this.coordinators.get(envelope.txnId);
      if (!entry || entry.node !== envelope.to) return;
      if (envelope.about === 'prepare') this.runCoordinator(envelope.txnId, entry.coord.onVote(envelope.from, envelope.vote));
      else if (envelope.about === 'commitTxn') this.runCoordinator(envelope.txnId, entry.coord.onCommitReply(envelope.from, envelope.vote, envelope.final ?? true));
      return;
    }
    const { msg } = envelope;
    const p = target.participant;
    const effects =
      msg.type === 'prepare'
        ? p.onPrepare(msg, target.refs.get(msg.op.repoId) ?? {})
        : msg.type === 'commitTxn'
          ? p.onCommit(msg.txnId, msg.epoch, msg.generation, msg.final ?? true)
          : p.onAbort(msg.txnId);
    const vote = this.runParticipant(target, msg.txnId, effects);
    if (effects.some((e) => e.type === 'stage')) p.onPrepared(msg.txnId);
    if (effects.some((e) => e.type === 'apply')) this.runParticipant(target, msg.txnId, p.onCommitted(msg.txnId));
    const final = msg.type === 'commitTxn' ? (msg.final ?? true) : undefined;
    if (vote) this.queue.push({ kind: 'reply', from: target.id, to: envelope.from, txnId: msg.txnId, about: msg.type, vote, ...(final === undefined ? {} : { final }) });
  }

  private runParticipant(n: SimNode, txnId: string, effects: ParticipantEffect[]): Vote | undefined {
    let vote: Vote | undefined;
    for (const effect of effects) {
      this.trace.push(`${n.id}:${effect.type}:${txnId}`);
      if (effect.type === 'persist') n.log.push(effect.entry);
      else if (effect.type === 'stage') n.staged.add(effect.txnId);
      else if (effect.type === 'discard') n.staged.delete(effect.txnId);
      else if (effect.type === 'apply' && effect.op.kind === 'push') {
        const refs = { ...(n.refs.get(effect.op.repoId) ?? {}) };
        for (const u of effect.op.updates) {
          if (u.new === ZERO_OID) delete refs[u.ref];
          else refs[u.ref] = u.new;
        }
        n.refs.set(effect.op.repoId, refs);
        n.applied.push(`push:${effect.op.repoId}@${effect.generation}`);
      } else if (effect.type === 'apply') n.applied.push(`${effect.op.kind}:${effect.op.repoId}@${effect.epoch}`);
      else if (effect.type === 'sync') n.applied.push(`sync:${effect.repoId}:${effect.to.state}@${effect.to.epoch}`);
      else if (effect.type === 'reply') vote = effect.vote;
    }
    return vote;
  }

  private runCoordinator(txnId: string, effects: CoordinatorEffect[]): void {
    const entry = this.coordinators.get(txnId);
    if (!entry) return;
    const n = this.node(entry.node);
    for (const effect of effects) {
      this.trace.push(`${n.id}:coord-${effect.type}${effect.type === 'send' ? `-${effect.msg.type}` : ''}:${txnId}`);
      switch (effect.type) {
        case 'persist':
          n.log.push(effect.entry);
          if (effect.entry.t === 'decision') n.participant.recordDecision(txnId, effect.entry.outcome, effect.entry.epoch, effect.entry.generation);
          break;
        case 'send':
          this.queue.push({ kind: 'msg', from: n.id, to: effect.to, txnId, msg: effect.msg });
          break;
        case 'setTimer':
          this.timers.push({ at: this.clock.now + effect.ms, txnId, name: effect.name });
          break;
        case 'reply':
          this.results.set(txnId, effect.result);
          break;
        case 'done':
          this.coordinators.delete(txnId);
          break;
      }
    }
  }
}
