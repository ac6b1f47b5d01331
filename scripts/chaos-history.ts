// The chaos run's model of what clients were told, and the rules that turn it into what every replica
// must hold at the end. Pure: no I/O, so the rules can be read (and tested) on their own.
//
// The one principle: only what a client was told for certain constrains the end state. A push or an API
// call whose answer was an error, a timeout, a 5xx that may mean "in doubt" or a dropped connection is
// indeterminate: it may or may not have happened, and the checker accepts either.

/** What the client heard. `failed` means definitely no effect (a refusal the protocol promises is clean). */
export type Outcome = 'ok' | 'failed' | 'indeterminate';

export interface RefResult {
  ref: string;
  oid: string;
  outcome: Outcome;
  /** The porcelain line or error text, for the report. */
  detail: string;
}

export type OpKind = 'push-own' | 'push-atomic' | 'push-shared' | 'create' | 'delete';

export interface OpRecord {
  seq: number;
  client: number;
  kind: OpKind;
  node: string;
  repoId: string;
  /** Pushes: one entry per ref pushed. */
  refs: RefResult[];
  outcome: Outcome;
  detail: string;
  startMs: number;
  endMs: number;
}

/**
 * Classifies a management API answer. 2xx: done. 4xx: refused before anything changed (repo_exists,
 * repo_not_found, repo_busy are pre-checks or lock refusals). 503 quorum_unreachable: the coordinator
 * aborted for want of votes, and presumed abort leaves nothing. Everything else (txn_in_doubt, other
 * 5xx, timeouts, connection errors) may have committed.
 */
export function classifyApiAnswer(status: number | undefined, code: string | undefined): Outcome {
  if (status === undefined) return 'indeterminate';
  if (status >= 200 && status < 300) return 'ok';
  if (status >= 400 && status < 500) return 'failed';
  if (status === 503 && code === 'quorum_unreachable') return 'failed';
  return 'indeterminate';
}

/**
 * Parses `git push --porcelain` output into one result per pushed ref. A ref reported ` ` (fast-forward),
 * `*` (new), `+` (forced) or `=` (already there) is acknowledged: the server said so after its hook, i.e.
 * after the quorum commit. `!` is a refusal: not acknowledged, and (since a refusal may say "in doubt")
 * treated as indeterminate, never as proof of absence. A ref with no line is indeterminate.
 */
export function parsePushPorcelain(stdout: string, pushed: { ref: string; oid: string }[]): RefResult[] {
  const lines = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    // <flag> TAB <from>:<to> TAB <summary> [(<reason>)]
    const m = /^([ *+=!-])\t([^\t]*):([^\t]*)\t(.*)$/.exec(line);
    if (m) lines.set(m[3]!, line);
  }
  return pushed.map(({ ref, oid }) => {
    const line = lines.get(ref);
    if (line === undefined) return { ref, oid, outcome: 'indeterminate', detail: 'no status for this ref' };
    const flag = line[0];
    if (flag === ' ' || flag === '*' || flag === '+' || flag === '=') return { ref, oid, outcome: 'ok', detail: line };
    return { ref, oid, outcome: 'indeterminate', detail: line };
  });
}

/** Whether a push result line was a refusal (for the figures only: refusals count as "rejected"). */
export function isRefusal(result: RefResult): boolean {
  return result.detail.startsWith('!');
}

/**
 * For a repo written by one client only, in order: which end states ('present' | 'absent') are allowed.
 * An acknowledged create or delete fixes the state; a failed one changes nothing; an indeterminate one
 * adds its effect as a possibility. `initiallyPresent` for repos made before the run.
 */
export function allowedRepoStates(ops: OpRecord[], initiallyPresent = false): Set<'present' | 'absent'> {
  let allowed = new Set<'present' | 'absent'>([initiallyPresent ? 'present' : 'absent']);
  for (const op of [...ops].sort((a, b) => a.seq - b.seq)) {
    if (op.kind !== 'create' && op.kind !== 'delete') continue;
    const effect = op.kind === 'create' ? 'present' : 'absent';
    if (op.outcome === 'ok') allowed = new Set([effect]);
    else if (op.outcome === 'indeterminate') allowed.add(effect);
  }
  return allowed;
}

/**
 * The oids every replica's final tip of each ref must contain (be at or ahead of): every acknowledged
 * pushed oid. Valid because no client ever force-pushes or deletes a ref in this run: each acknowledged
 * push was a fast-forward of the ref at that moment, so it stays an ancestor of every later tip.
 * Keyed by `<repoId> <ref>`.
 */
export function requiredAncestors(ops: OpRecord[]): Map<string, { oid: string; seq: number }[]> {
  const out = new Map<string, { oid: string; seq: number }[]>();
  for (const op of ops) {
    for (const r of op.refs) {
      if (r.outcome !== 'ok') continue;
      const key = `${op.repoId} ${r.ref}`;
      let list = out.get(key);
      if (!list) out.set(key, (list = []));
      list.push({ oid: r.oid, seq: op.seq });
    }
  }
  return out;
}
