import type { Logger } from '../base/logger.js';

// The audit log: one JSON line (message `audit`, field `audit` naming the event) for every create,
// delete, settings change and push, and every request refused by policy (401, 403, 404 for a repo the caller may not
// see). It goes to the node's log like every other line, so it carries server_id and a timestamp.
// It names who (user, and whether by password or which token, by its name) and from where; it never
// holds a password, a token or an Authorization header: nothing here is given one.

export interface AuditWho {
  /** null: anonymous, or no AUTH_FILE. */
  user: string | null;
  via?: 'password' | 'token';
  /** The token's name (never the token). */
  token_name?: string;
  /** The client's address (a proxying peer's x-forwarded-for entry for proxied requests). */
  client: string;
}

/** At most this many ref updates are listed in one push's line; `refs_total` says how many there were. */
export const AUDIT_MAX_REFS = 100;

export interface AuditRefUpdate {
  ref: string;
  old: string;
  new: string;
}

export function auditDenied(
  log: Logger,
  fields: AuditWho & { request_id: string; method: string; path: string; repo_id?: string; status: number; reason: string },
): void {
  log.info('audit', { audit: 'denied', ...fields });
}

export function auditRepoChange(
  log: Logger,
  fields: AuditWho & { action: 'create' | 'delete' | 'settings'; request_id: string; repo_id: string; outcome: string; txn_ids: string[]; settings?: unknown },
): void {
  const { action, ...rest } = fields;
  log.info('audit', { audit: action, ...rest });
}

export function auditPush(
  log: Logger,
  fields: AuditWho & { request_id: string | undefined; repo_id: string; updates: readonly AuditRefUpdate[]; refs_total: number; outcome: string; reason?: string; txn_id?: string },
): void {
  const { updates, ...rest } = fields;
  log.info('audit', { audit: 'push', ...rest, refs: updates.slice(0, AUDIT_MAX_REFS).map((u) => `${u.ref} ${u.old} -> ${u.new}`) });
}

/** The ref updates of a pre-receive body (`<old> <new> <ref>` lines), leniently: for the log only. */
export function auditUpdates(body: string, max = AUDIT_MAX_REFS): { updates: AuditRefUpdate[]; total: number } {
  const updates: AuditRefUpdate[] = [];
  let total = 0;
  for (const line of body.split('\n')) {
    if (line === '') continue;
    total += 1;
    if (updates.length >= max) continue;
    const [old = '', next = '', ref = ''] = line.split(' ');
    updates.push({ ref: ref.slice(0, 256), old: old.slice(0, 64), new: next.slice(0, 64) });
  }
  return { updates, total };
}
