import { QuorumGitError } from '../core/errors.js';
import { PACK_FILE } from '../git/git-refs.js';
import { STAGE_ID, TXN_ID, formatRepoId, parseRepoId, parseRepoParts } from '../core/repo-id.js';

// Classifies every request before anything else sees it. Pure: a method and a raw URL in, a route
// (plain data) out, or a QuorumGitError. The server only carries the route out.

export type GitService = 'upload-pack' | 'receive-pack';

export type Route =
  | { kind: 'health' }
  | { kind: 'healthLive' }
  | { kind: 'healthReady' }
  | { kind: 'metrics' }
  | { kind: 'listRepos' }
  | { kind: 'createRepo' }
  | { kind: 'getRepo'; repoId: string }
  | { kind: 'deleteRepo'; repoId: string }
  | { kind: 'updateRepoSettings'; repoId: string }
  | { kind: 'internalPing' }
  | { kind: 'internalCatalog' }
  | { kind: 'internalNode' }
  /** The operator declares a node dead for good, or readmits it (`quorum-git node`). */
  | { kind: 'internalMembership' }
  | { kind: 'internalTxn'; step: 'prepare' | 'commit' | 'abort' }
  | { kind: 'internalQuery'; txnId: string; refuse: boolean; asCoordinator: boolean; repoId?: string }
  | { kind: 'internalHook'; hook: 'pre-receive' | 'proc-receive' }
  | { kind: 'internalPackUpload'; txnId: string; file: string }
  /** A push's pack streamed ahead of its transaction (lib/cluster/pack-tee.ts). */
  | { kind: 'internalPackStage'; stageId: string; drop: boolean }
  | { kind: 'internalRepoState'; repoId: string; withRefs: boolean; withDigest: boolean }
  | { kind: 'gitInfoRefs'; repoId: string; service: GitService }
  | { kind: 'gitRpc'; repoId: string; service: GitService };

function methodNotAllowed(method: string, allowed: string): QuorumGitError {
  return new QuorumGitError('method_not_allowed', `${method} is not allowed here; use ${allowed}`, { details: { allowed } });
}

function gitService(value: string | null): GitService | undefined {
  if (value === 'git-upload-pack') return 'upload-pack';
  if (value === 'git-receive-pack') return 'receive-pack';
  return undefined;
}

export function route(method: string, rawUrl: string): Route {
  const queryAt = rawUrl.indexOf('?');
  const rawPath = queryAt === -1 ? rawUrl : rawUrl.slice(0, queryAt);
  const query = new URLSearchParams(queryAt === -1 ? '' : rawUrl.slice(queryAt + 1));
  // Repo names never contain '%', so an encoded character in a path can only be an attempt to smuggle
  // a separator or a dot-segment past validation.
  if (!rawPath.startsWith('/') || rawPath.includes('%') || rawPath.includes('\\') || rawPath.includes('//')) {
    throw new QuorumGitError('invalid_path', 'the request path is malformed or percent-encoded');
  }
  const segments = rawPath.split('/').slice(1);
  if (segments.length > 1 && segments[segments.length - 1] === '') segments.pop();
  if (segments.some((s) => s === '.' || s === '..')) throw new QuorumGitError('invalid_path', 'dot-segments are not allowed in paths');
  const [first, second, third, ...rest] = segments;

  if (first === 'health' && segments.length === 1) {
    if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, 'GET');
    return { kind: 'health' };
  }
  if (first === 'health' && segments.length === 2 && (second === 'live' || second === 'ready')) {
    if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, 'GET');
    return { kind: second === 'live' ? 'healthLive' : 'healthReady' };
  }
  if (first === 'metrics' && segments.length === 1) {
    if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, 'GET');
    return { kind: 'metrics' };
  }
  if (first === 'repos') {
    if (segments.length === 1) {
      if (method === 'GET') return { kind: 'listRepos' };
      if (method === 'POST') return { kind: 'createRepo' };
      throw methodNotAllowed(method, 'GET, POST');
    }
    if (segments.length === 3) {
      const repoId = formatRepoId(parseRepoParts(second!, third!));
      if (method === 'GET') return { kind: 'getRepo', repoId };
      if (method === 'DELETE') return { kind: 'deleteRepo', repoId };
      if (method === 'PATCH') return { kind: 'updateRepoSettings', repoId };
      throw methodNotAllowed(method, 'GET, PATCH, DELETE');
    }
    throw new QuorumGitError('not_found', 'no such route; repositories are /repos/<owner>/<name>');
  }
  if (first === 'internal') {
    if (second === 'ping' && segments.length === 2 && method === 'GET') return { kind: 'internalPing' };
    if (second === 'catalog' && segments.length === 2 && method === 'GET') return { kind: 'internalCatalog' };
    if (second === 'node' && segments.length === 2 && method === 'GET') return { kind: 'internalNode' };
    if (second === 'membership' && segments.length === 2) {
      if (method !== 'POST') throw methodNotAllowed(method, 'POST');
      return { kind: 'internalMembership' };
    }
    if (second === 'txn' && segments.length === 3 && (third === 'prepare' || third === 'commit' || third === 'abort')) {
      if (method !== 'POST') throw methodNotAllowed(method, 'POST');
      return { kind: 'internalTxn', step: third };
    }
    if (second === 'hooks' && third === 'pre-receive' && segments.length === 3 && method === 'POST') return { kind: 'internalHook', hook: third };
    // An upgrade to the proc-receive protocol (lib/git/proc-receive.ts), as WebSockets do it: a GET.
    if (second === 'hooks' && third === 'proc-receive' && segments.length === 3 && method === 'GET') return { kind: 'internalHook', hook: third };
    if (second === 'push' && segments.length === 4 && method === 'PUT' && TXN_ID.test(third!) && PACK_FILE.test(rest[0]!)) {
      return { kind: 'internalPackUpload', txnId: third!, file: rest[0]! };
    }
    if (second === 'stage' && segments.length === 3 && STAGE_ID.test(third!)) {
      if (method !== 'PUT' && method !== 'DELETE') throw methodNotAllowed(method, 'PUT, DELETE');
      return { kind: 'internalPackStage', stageId: third!, drop: method === 'DELETE' };
    }
    if (second === 'repo-state' && segments.length === 4 && method === 'GET') {
      return {
        kind: 'internalRepoState',
        repoId: formatRepoId(parseRepoParts(third!, rest[0]!)),
        withRefs: query.get('refs') === '1',
        withDigest: query.get('digest') === '1',
      };
    }
    if (second === 'txn' && segments.length === 3 && method === 'GET' && TXN_ID.test(third!)) {
      // `repo`: the transaction's repo, named by a node recovering it (the answer then says what this node holds of it).
      const repo = query.get('repo');
      return {
        kind: 'internalQuery',
        txnId: third!,
        refuse: query.get('refuse') === '1',
        asCoordinator: query.get('coordinator') === '1',
        ...(repo === null ? {} : { repoId: formatRepoId(parseRepoId(repo)) }),
      };
    }
    throw new QuorumGitError('not_found', 'no such internal route');
  }

  // Git smart HTTP: /<owner>/<name>[.git]/info/refs and /<owner>/<name>[.git]/git-<service>.
  // An invalid name here is simply a repo that does not exist: git clients get a plain 404.
  if (first !== undefined && second !== undefined && third !== undefined) {
    const name = second.endsWith('.git') ? second.slice(0, -4) : second;
    let repoId: string;
    try {
      repoId = formatRepoId(parseRepoParts(first, name));
    } catch {
      throw new QuorumGitError('repo_not_found', 'repository not found');
    }
    if (third === 'info' && rest.length === 1 && rest[0] === 'refs') {
      if (method !== 'GET') throw methodNotAllowed(method, 'GET');
      const service = gitService(query.get('service'));
      if (!service) throw new QuorumGitError('invalid_path', 'only the smart HTTP protocol is served: ?service=git-upload-pack or git-receive-pack');
      return { kind: 'gitInfoRefs', repoId, service };
    }
    const rpc = rest.length === 0 ? gitService(third) : undefined;
    if (rpc) {
      if (method !== 'POST') throw methodNotAllowed(method, 'POST');
      return { kind: 'gitRpc', repoId, service: rpc };
    }
  }
  throw new QuorumGitError('not_found', 'no such route');
}
