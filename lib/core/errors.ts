// Every error the node can report, with a stable code: the API's errors, a participant's no votes
// and the coordinator's abort codes are one vocabulary (a vote's code reaches the client as the abort's,
// the abort's as the API's). Codes carry no HTTP knowledge; the one table below maps each to a status,
// and the `satisfies Record<ErrorCode, number>` makes the compiler refuse a new code without a status.

export type ErrorCode =
  | 'invalid_json'
  | 'invalid_body'
  | 'body_too_large'
  | 'invalid_repo_id'
  | 'reserved_owner'
  | 'invalid_path'
  | 'not_found'
  | 'repo_not_found'
  | 'repo_exists'
  | 'repo_busy'
  | 'settings_conflict'
  | 'method_not_allowed'
  | 'unsupported_media_type'
  | 'unauthorized'
  | 'forbidden'
  | 'auth_busy'
  | 'quorum_unreachable'
  | 'txn_in_doubt'
  | 'replica_behind'
  | 'read_quorum_unreachable'
  | 'peer_unavailable'
  | 'request_timeout'
  | 'git_busy'
  | 'not_ready'
  | 'unknown_peer'
  | 'not_coordinator'
  | 'node_declared_dead'
  | 'membership_refused'
  | 'internal'
  // Votes and aborts of the two-phase commit (txn-core's NoVoteCode and AbortCode).
  | 'refused'
  | 'unreachable'
  | 'stage_failed'
  | 'stale'
  | 'ref_conflict'
  | 'ref_name_clash'
  | 'protected_ref';

export const statusByCode = {
  invalid_json: 400,
  invalid_body: 400,
  body_too_large: 413,
  invalid_repo_id: 400,
  reserved_owner: 400,
  invalid_path: 400,
  not_found: 404,
  repo_not_found: 404,
  repo_exists: 409,
  repo_busy: 409,
  settings_conflict: 409,
  method_not_allowed: 405,
  unsupported_media_type: 415,
  unauthorized: 401,
  forbidden: 403,
  auth_busy: 503,
  quorum_unreachable: 503,
  txn_in_doubt: 503,
  replica_behind: 503,
  read_quorum_unreachable: 503,
  peer_unavailable: 502,
  request_timeout: 408,
  git_busy: 503,
  not_ready: 503,
  unknown_peer: 403,
  not_coordinator: 403,
  node_declared_dead: 403,
  membership_refused: 409,
  internal: 500,
  refused: 409,
  unreachable: 503,
  stage_failed: 503,
  stale: 409,
  ref_conflict: 409,
  ref_name_clash: 409,
  protected_ref: 403,
} as const satisfies Record<ErrorCode, number>;

/** The codes a participant votes no with (a peer's answer is checked against this list). */
export const NO_VOTE_CODES = [
  'repo_exists',
  'repo_not_found',
  'repo_busy',
  'refused',
  'unreachable',
  'stage_failed',
  'stale',
  'ref_conflict',
  'ref_name_clash',
  'protected_ref',
] as const satisfies readonly ErrorCode[];

/** The codes a coordinator aborts with: what the client of the create, delete or push hears. */
export const ABORT_CODES = ['repo_exists', 'repo_not_found', 'repo_busy', 'quorum_unreachable', 'stale', 'ref_conflict', 'ref_name_clash', 'protected_ref'] as const satisfies readonly ErrorCode[];

export class QuorumGitError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'QuorumGitError';
    this.code = code;
    this.details = options.details;
  }
}

export function isQuorumGitError(err: unknown): err is QuorumGitError {
  return err instanceof QuorumGitError;
}

/** The client-facing body. Never includes a stack or a cause: those go to the log only. */
export function errorBody(err: QuorumGitError): { error: { code: ErrorCode; message: string } & Record<string, unknown> } {
  return { error: { code: err.code, message: err.message, ...(err.details ?? {}) } };
}
