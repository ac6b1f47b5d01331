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

// The other names that arrive from outside (a pusher, a peer, the users file): ref names, user names,
// transaction ids. One validator for each kind of name, whoever sends it.

/** A transaction id names directories (staging, incoming): never '.', '..' or anything with a slash. */
export const TXN_ID = /^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$/;

/** A pack streamed to a peer ahead of its push's transaction is kept under this name (lib/cluster/pack-tee.ts). */
export const STAGE_ID = /^stage-[0-9a-f]{24}$/;

/** Refs kept aside by repair and catch-up; never advertised (transfer.hideRefs), compared or copied. */
export const LOST_FOUND_PREFIX = 'refs/lost+found/';

/**
 * Where catch-up fetches a source's refs before it moves ours (refs/quorum-fetch/<stamp>/...): like
 * lost+found, never advertised (transfer.hideRefs), compared or copied, and removed after each run.
 */
export const FETCH_NAMESPACE_PREFIX = 'refs/quorum-fetch/';

/** True for the refs that are this node's own business (lost+found, the fetch namespace). */
export function isPrivateRef(ref: string): boolean {
  return ref.startsWith(LOST_FOUND_PREFIX) || ref.startsWith(FETCH_NAMESPACE_PREFIX);
}

/**
 * Why a pushed ref name must be refused, or undefined. The pre-receive hook runs before receive-pack's
 * own name checks, so whatever git would call a "funny refname" is refused here first (else the peers
 * would apply a ref the client is told was refused): git's check-ref-format rules, with at least two
 * levels below refs/. And the namespaces that are the nodes' own (refs/lost+found/ for what a repair
 * kept, refs/quorum-fetch/ for catch-up) are never written by a client.
 */
export function refNameProblem(ref: string): string | undefined {
  if (!ref.startsWith('refs/')) return 'only refs under refs/ can be pushed';
  if (isPrivateRef(ref)) return 'this namespace is reserved for the cluster';
  const rest = ref.slice('refs/'.length);
  const parts = rest.split('/');
  if (parts.length < 2) return 'a ref needs at least two levels below refs/ (e.g. refs/heads/name)';
  if (rest.endsWith('/') || rest.endsWith('.')) return 'a ref name cannot end with / or .';
  if (ref.includes('@{') || ref === 'refs/@') return 'a ref name cannot contain @{';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(ref)) return 'a ref name cannot contain spaces, control characters or any of ~ ^ : ? * [ \\';
  for (const part of parts) {
    if (part === '') return 'a ref name cannot contain //';
    if (part.startsWith('.')) return 'no part of a ref name can start with .';
    if (part.endsWith('.lock')) return 'no part of a ref name can end with .lock';
  }
  if (ref.includes('..')) return 'a ref name cannot contain ..';
  return undefined;
}

/** Why `name` cannot be a user name, or undefined. A user owns the repos `<name>/...`, so names follow the owner rules. */
export function userNameProblem(name: string): string | undefined {
  if (name.length === 0 || name.length > PART_MAX_CHARS) return `a user name is 1-${PART_MAX_CHARS} characters`;
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(name)) return "a user name may contain only letters, digits, '.', '_' and '-', and may not start with '.' or '-'";
  if (RESERVED_OWNERS.has(name.toLowerCase())) return `'${name}' is reserved for the server's own routes`;
  return undefined;
}
