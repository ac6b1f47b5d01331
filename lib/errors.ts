// Every error the node can report, with a stable code. Codes carry no HTTP knowledge; the one table
// below maps each to a status, and the `satisfies Record<ErrorCode, number>` makes the compiler
// refuse a new code without a status.

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
  | 'method_not_allowed'
  | 'unsupported_media_type'
  | 'unauthorized'
  | 'quorum_unreachable'
  | 'txn_in_doubt'
  | 'replica_behind'
  | 'read_quorum_unreachable'
  | 'peer_unavailable'
  | 'request_timeout'
  | 'git_busy'
  | 'unknown_peer'
  | 'not_coordinator'
  | 'internal';

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
  method_not_allowed: 405,
  unsupported_media_type: 415,
  unauthorized: 401,
  quorum_unreachable: 503,
  txn_in_doubt: 503,
  replica_behind: 503,
  read_quorum_unreachable: 503,
  peer_unavailable: 502,
  request_timeout: 408,
  git_busy: 503,
  unknown_peer: 403,
  not_coordinator: 403,
  internal: 500,
} as const satisfies Record<ErrorCode, number>;

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
