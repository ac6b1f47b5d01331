import {
  CoordinatorTxn,
  Participant,
  Recovery,
  resolveInDoubt,
  type ClusterView,
  type CoordinatorEffect,
  type QueryAnswer,
  type Vote,
  type LogEntry,
  type NodeId,
  type ParticipantEffect,
  type RecoveryStep,
  type RepoVersion,
  type TxnOp,
} from '../../lib/core/txn-core.js';

// Issue 7's protocol defects put back, one at a time, into the real core: the simulation runs the real
// driver over one of these in place of Participant, and driver-sim.spec shows it finds each defect.
// Each class overrides only the step its fix changed, with the behaviour from before the fix.

/**
 * Defect 1: the coordinator kept its decision in memory without the generation and answered a
 * recovering participant without it, a replica applied a commit whose version did not follow its own
 * (it committed at generation 0 and moved its refs), and the coordinator counted any yes as an ack.
 */
class Defect1 extends Participant {
  override recordDecision(txnId: string, outcome: 'commit' | 'abort', epoch?: number, _generation?: number, op?: TxnOp, acceptors?: NodeId[]): void {
    super.recordDecision(txnId, outcome, epoch, undefined, op, acceptors);
  }

  override onCoordinatorQuery(txnId: string, stillRunning: boolean): QueryAnswer {
    const { generation: _generation, ...answer } = super.onCoordinatorQuery(txnId, stillRunning);
    return answer;
  }

  protected override commitProblem(): string | undefined {
    return undefined;
  }

  /** A re-sent commit was acknowledged whatever version this replica had applied. */
  override onCommit(txnId: string, epoch: number, generation = 0, final = true, acceptors?: NodeId[]): ParticipantEffect[] {
    if (this.status(txnId) === 'committed') return [{ type: 'reply', vote: { vote: 'yes', epoch, generation } }];
    return super.onCommit(txnId, epoch, generation, final, acceptors);
  }
}

class Defect1Coordinator extends CoordinatorTxn {
  override onCommitReply(from: NodeId, vote: Vote, final: boolean): CoordinatorEffect[] {
    return super.onCommitReply(from, vote.vote === 'yes' ? { vote: 'yes', epoch: this.epoch, generation: this.generation } : vote, final);
  }
}

/**
 * Defect 5: recovery asked only the nodes other than itself and the coordinator, and abort needed
 * N - W + 1 refusals among them (on 3 nodes one node can never give 2): a dead coordinator held the
 * repo for good.
 */
class Defect5Recovery extends Recovery {
  protected override conclude(): RecoveryStep {
    if (this.coordinatorAnswer === 'pending' || this.moved()) return { type: 'wait' };
    const verdict = resolveInDoubt({ coordinator: this.coordinatorAnswer, peers: this.answers, self: 'counted' }, this.cluster.nodes.length, this.cluster.quorum);
    if (verdict === 'abort') return { type: 'abort' };
    const { op } = this.txn;
    if (verdict === 'wait' || op.kind !== 'push') return { type: 'wait' };
    return { type: 'commit', version: { epoch: op.base.epoch, generation: op.base.generation + 1 } };
  }
}

class Defect5 extends Participant {
  override recovery(txn: { txnId: string; op: TxnOp; coordinator: NodeId; ownDecision?: boolean }, cluster: ClusterView): Recovery {
    return new Defect5Recovery(this, txn, cluster);
  }
}

/** Defect 7: every restart applied every decided push in the log again. */
class Defect7 extends Participant {
  private readonly decided = new Map<string, { op: TxnOp; coordinator: NodeId; version: RepoVersion }>();
  private readonly prepares = new Map<string, { op: TxnOp; coordinator: NodeId }>();

  override replay(entry: LogEntry): void {
    super.replay(entry);
    if (entry.t === 'prepared') this.prepares.set(entry.txnId, { op: entry.op, coordinator: entry.coordinator });
    if (entry.t === 'committed') {
      const prepared = this.prepares.get(entry.txnId);
      if (prepared?.op.kind === 'push') this.decided.set(entry.txnId, { ...prepared, version: { epoch: entry.epoch, generation: entry.generation ?? 0 } });
    }
  }

  override unapplied(): ReturnType<Participant['unapplied']> {
    const own = super.unapplied();
    const again = [...this.decided].filter(([txnId]) => !own.some((t) => t.txnId === txnId));
    return [...own, ...again.map(([txnId, d]) => ({ txnId, op: d.op, coordinator: d.coordinator, ...d.version }))];
  }

  override onReapply(txnId: string): ParticipantEffect[] {
    const again = this.decided.get(txnId);
    if (!again) return super.onReapply(txnId);
    // Once per restart, as the old replay did.
    this.decided.delete(txnId);
    return [
      { type: 'apply', txnId, op: again.op, ...again.version, coordinator: again.coordinator },
      { type: 'reply', vote: { vote: 'yes', ...again.version } },
    ];
  }
}

export const MUTANT_NAMES = ['defect-1', 'defect-5', 'defect-7'] as const;
export type MutantName = (typeof MUTANT_NAMES)[number];

/** The driver options that run a core with `name` put back. */
export function mutantCore(name: MutantName): { participant: Participant; coordinatorTxn?: typeof CoordinatorTxn } {
  switch (name) {
    case 'defect-1':
      return { participant: new Defect1(), coordinatorTxn: Defect1Coordinator };
    case 'defect-5':
      return { participant: new Defect5() };
    case 'defect-7':
      return { participant: new Defect7() };
  }
}
