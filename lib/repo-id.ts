import { QuorumGitError } from './errors.js';

// Repository ids are `owner/name`. Each part is 1-100 characters of [A-Za-z0-9._-], not starting
// with '.' or '-' (so never '.', '..' or an option-looking argument to git), and the name does not
// end in '.git' (the suffix is the URL's, never part of the id). Owners that are our own top-level
// routes are refused so a repo URL can never shadow the API.

export const PART_MAX_CHARS = 100;
const PART = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

export const RESERVED_OWNERS: ReadonlySet<string> = new Set([
  'repos', 'health', 'metrics', 'internal', 'api', 'admin', 'static', 'assets', 'favicon.ico', 'robots.txt',
]);

export interface RepoId {
  owner: string;
  name: string;
}

export function formatRepoId(id: RepoId): string {
  return `${id.owner}/${id.name}`;
}

function checkPart(kind: 'owner' | 'name', value: string): void {
  if (value.length === 0 || value.length > PART_MAX_CHARS) {
    throw new QuorumGitError('invalid_repo_id', `${kind} must be 1-${PART_MAX_CHARS} characters, got ${value.length}`);
  }
  if (!PART.test(value)) {
    throw new QuorumGitError(
      'invalid_repo_id',
      `${kind} may contain only letters, digits, '.', '_' and '-', and may not start with '.' or '-'`,
    );
  }
}

export function parseRepoParts(owner: string, name: string): RepoId {
  checkPart('owner', owner);
  checkPart('name', name);
  if (name.toLowerCase().endsWith('.git')) {
    throw new QuorumGitError('invalid_repo_id', "name must not end in '.git' (the suffix belongs to the URL)");
  }
  if (RESERVED_OWNERS.has(owner.toLowerCase())) {
    throw new QuorumGitError('reserved_owner', `owner '${owner}' is reserved for the server's own routes`);
  }
  return { owner, name };
}

/** Parses a `repo_id` string from a request body. */
export function parseRepoId(value: unknown): RepoId {
  if (typeof value !== 'string') {
    throw new QuorumGitError('invalid_body', 'repo_id must be a string of the form owner/name');
  }
  const parts = value.split('/');
  if (parts.length !== 2) {
    throw new QuorumGitError('invalid_repo_id', 'repo_id must be of the form owner/name');
  }
  return parseRepoParts(parts[0]!, parts[1]!);
}
