import type http from 'node:http';
import { type Principal, type Scope, type UserDirectory, scopeAtLeast } from './auth.js';
import { auditDenied, type AuditWho } from './audit.js';
import { QuorumGitError } from '../core/errors.js';
import type { Logger } from '../base/logger.js';
import type { Route } from './router.js';

// Who may do what. The rules are pure functions (decideRepo, decideCreate) over a principal, a repo
// id and the repo's access settings; the Gate applies them to requests, answers a denial the way git
// and API clients understand, and writes each denial to the audit log.
//
// A caller's level on a repo: admin for its owner (the first path segment) and for admin users;
// a collaborator's listed level; read for anyone on a public repo; else none. A credential caps it: a
// password may do all its user may, a token no more than its top scope. Needed: read to clone, fetch
// or look at a repo; write to push; admin to delete and to change its settings (PATCH /repos/o/n).
//
// Denials: no credentials where a user is needed -> 401 with a Basic challenge, so git asks for them;
// a repo the caller may not see -> 404, exactly like a repo that does not exist; seen but not allowed
// -> 403. Without AUTH_FILE there is no Gate policy: everything is allowed to everyone, as before.

export type Level = Scope;

/** A repo's access settings: the replicated repo settings' part that decides access (lib/core/repo-settings.ts). */
export interface RepoAccess {
  visibility: 'public' | 'private';
  collaborators: Readonly<Record<string, Level>>;
}

export const PRIVATE_REPO_ACCESS: RepoAccess = Object.freeze({ visibility: 'private' as const, collaborators: Object.freeze({}) });

/** Where a repo's access settings come from (lib/http/management-api.ts `repoAccess`). */
export type RepoAccessSource = (repoId: string) => RepoAccess;

export const AUTH_CHALLENGE = 'Basic realm="quorum-git"';

export type Decision = { allow: true } | { allow: false; status: 401 | 403 | 404; reason: string };

function ownerOf(repoId: string): string {
  return repoId.slice(0, repoId.indexOf('/'));
}

/** The caller's level on the repo by who they are, before their credential's cap; undefined: none. */
export function roleOn(principal: Principal | undefined, repoId: string, access: RepoAccess): Level | undefined {
  if (principal !== undefined) {
    if (principal.admin || ownerOf(repoId) === principal.user) return 'admin';
    const listed = Object.hasOwn(access.collaborators, principal.user) ? access.collaborators[principal.user] : undefined;
    if (listed !== undefined) return listed;
  }
  return access.visibility === 'public' ? 'read' : undefined;
}

export function decideRepo(principal: Principal | undefined, repoId: string, need: Level, access: RepoAccess): Decision {
  const role = roleOn(principal, repoId, access);
  const effective = role === undefined ? undefined : principal === undefined || scopeAtLeast(principal.scope, role) ? role : principal.scope;
  if (effective !== undefined && scopeAtLeast(effective, need)) return { allow: true };
  if (principal === undefined) return { allow: false, status: 401, reason: `${need} needs a user` };
  if (role === undefined) return { allow: false, status: 404, reason: 'repo not visible to the caller' };
  if (!scopeAtLeast(role, need)) return { allow: false, status: 403, reason: `${need} needs more than ${role} access` };
  return { allow: false, status: 403, reason: `the ${principal.via === 'token' ? `token's scope ${principal.scope}` : 'credential'} does not allow ${need}` };
}

/** A user creates repos under their own name; admins anywhere. A token needs write (admin, for someone else's name). */
export function decideCreate(principal: Principal | undefined, repoId: string): Decision {
  if (principal === undefined) return { allow: false, status: 401, reason: 'create needs a user' };
  const own = ownerOf(repoId) === principal.user;
  if (!own && !principal.admin) return { allow: false, status: 403, reason: 'repos are created under their creator\'s own name' };
  const need: Level = own ? 'write' : 'admin';
  if (!scopeAtLeast(principal.scope, need)) return { allow: false, status: 403, reason: `the token's scope ${principal.scope} does not allow create${own ? '' : ' under another name'}` };
  return { allow: true };
}

/**
 * What a route needs before its handler runs: nothing (`open`: health), the cluster secret (`peer`:
 * checked by the server), a level on a repo, a user (a create: its repo id is in the body, checked by
 * Gate.checkCreate), or any caller whose credentials, if sent, are right (`any`: a list shows each what
 * they may read). Exhaustive: a new route does not compile until it says what it needs.
 */
export type Requirement =
  | { kind: 'open' }
  | { kind: 'peer' }
  | { kind: 'any' }
  | { kind: 'user' }
  | { kind: 'repo'; repoId: string; level: Level };

export function requirement(route: Route): Requirement {
  switch (route.kind) {
    case 'health':
    case 'healthLive':
    case 'healthReady':
    case 'metrics':
      // Counts, states and node URLs, never repo names or secrets (see README, Metrics).
      return { kind: 'open' };
    case 'internalPing':
    case 'internalCatalog':
    case 'internalNode':
    case 'internalMembership':
    case 'internalTxn':
    case 'internalQuery':
    case 'internalHook':
    case 'internalPackUpload':
    case 'internalPackStage':
    case 'internalRepoState':
      return { kind: 'peer' };
    case 'listRepos':
      return { kind: 'any' };
    case 'createRepo':
      return { kind: 'user' };
    case 'getRepo':
      return { kind: 'repo', repoId: route.repoId, level: 'read' };
    case 'deleteRepo':
    case 'updateRepoSettings':
      return { kind: 'repo', repoId: route.repoId, level: 'admin' };
    case 'gitInfoRefs':
    case 'gitRpc':
      return { kind: 'repo', repoId: route.repoId, level: route.service === 'receive-pack' ? 'write' : 'read' };
  }
}

/** Who sent a request, as the rest of the node needs to know it. */
export interface Caller {
  /** undefined: anonymous (or no AUTH_FILE). */
  principal: Principal | undefined;
  /** False without AUTH_FILE: every check passes. */
  enforced: boolean;
  who: AuditWho;
}

export interface GateOptions {
  users: UserDirectory | undefined;
  repoAccess: RepoAccessSource;
}

/** Request context a denial is logged with. */
export interface RequestContext {
  log: Logger;
  client: string;
  requestId: string;
  method: string;
  path: string;
}

/** Who sent each request being served: set by the app once the Gate has let it in, read by the handlers after it. */
export type Callers = WeakMap<http.IncomingMessage, { caller: Caller; ctx: RequestContext }>;

export class Gate {
  private readonly options: GateOptions;

  constructor(options: GateOptions) {
    this.options = options;
  }

  get enforced(): boolean {
    return this.options.users !== undefined;
  }

  /**
   * Checks the request's credentials and that the route is allowed for them as far as it can be
   * told from the route alone (a create's repo id is in its body: `checkCreate`). Throws the
   * denial; `trustedPeer`: a peer's own request (catch-up), which the cluster secret authorizes.
   */
  async authorize(req: http.IncomingMessage, res: http.ServerResponse, route: Route, ctx: RequestContext, trustedPeer: boolean): Promise<Caller> {
    const anonymous: Caller = { principal: undefined, enforced: this.enforced, who: { user: null, client: ctx.client } };
    const users = this.options.users;
    const need = requirement(route);
    if (users === undefined || need.kind === 'open' || need.kind === 'peer' || trustedPeer) return anonymous;
    let outcome;
    try {
      outcome = await users.authenticate(req.headers.authorization);
    } catch (err) {
      if (err instanceof QuorumGitError && err.code === 'auth_busy') res.setHeader('retry-after', '1');
      throw err;
    }
    if (!outcome.ok) {
      const who: AuditWho = { user: outcome.user ?? null, client: ctx.client };
      throw this.deny(res, ctx, who, 'repoId' in route ? route.repoId : undefined, { allow: false, status: 401, reason: outcome.reason }, 'authentication failed');
    }
    const principal = outcome.principal;
    const caller: Caller = { principal, enforced: true, who: whoOf(principal, ctx.client) };
    if (need.kind === 'repo') this.check(res, ctx, caller, need.repoId, need.level);
    if (need.kind === 'user' && principal === undefined) throw this.deny(res, ctx, caller.who, undefined, { allow: false, status: 401, reason: 'needs a user' });
    return caller;
  }

  /** Throws unless the caller may create `repoId`. */
  checkCreate(res: http.ServerResponse, ctx: RequestContext, caller: Caller, repoId: string): void {
    if (!caller.enforced) return;
    const decision = decideCreate(caller.principal, repoId);
    if (!decision.allow) throw this.deny(res, ctx, caller.who, repoId, decision);
  }

  /** Whether the caller may see the repo (lists show only those). */
  canRead(caller: Caller, repoId: string): boolean {
    return !caller.enforced || decideRepo(caller.principal, repoId, 'read', this.options.repoAccess(repoId)).allow;
  }

  private check(res: http.ServerResponse, ctx: RequestContext, caller: Caller, repoId: string, need: Level): void {
    const decision = decideRepo(caller.principal, repoId, need, this.options.repoAccess(repoId));
    if (!decision.allow) throw this.deny(res, ctx, caller.who, repoId, decision);
  }

  /** Logs the denial and returns the error to answer; a 401 carries the challenge git answers with credentials. */
  private deny(res: http.ServerResponse, ctx: RequestContext, who: AuditWho, repoId: string | undefined, decision: Decision & { allow: false }, message?: string): QuorumGitError {
    // The body of a refused request is not read (a push's pack): the connection closes after the answer.
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      res.setHeader('connection', 'close');
      res.once('finish', () => res.req.destroy());
    }
    auditDenied(ctx.log, { ...who, request_id: ctx.requestId, method: ctx.method, path: ctx.path, ...(repoId === undefined ? {} : { repo_id: repoId }), status: decision.status, reason: decision.reason });
    switch (decision.status) {
      case 401:
        res.setHeader('www-authenticate', AUTH_CHALLENGE);
        return new QuorumGitError('unauthorized', message ?? 'authentication required: send a user name and a password or token (HTTP Basic), or a Bearer token');
      case 403:
        return new QuorumGitError('forbidden', `not allowed: ${decision.reason}`);
      case 404:
        // Word for word what a repo that does not exist gets (lib/http/management-api.ts sendRepoNotFound).
        return new QuorumGitError('repo_not_found', ctx.path.startsWith('/repos/') ? `repository ${repoId} does not exist` : 'repository not found');
    }
  }
}

function whoOf(principal: Principal | undefined, client: string): AuditWho {
  if (principal === undefined) return { user: null, client };
  return { user: principal.user, via: principal.via, ...(principal.token === undefined ? {} : { token_name: principal.token }), client };
}
