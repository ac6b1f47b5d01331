import { refNameProblem, userNameProblem } from './repo-id.js';

// A repo's settings, replicated like a create (a `settings` transaction, see lib/core/txn-core.ts): who may
// see it (visibility), who else may read, push or administer it (collaborators), and which branches a
// push may neither delete nor move non-fast-forward (protectedBranches). Every node holds the same
// committed settings, so every node decides access and protection alike. This file only validates
// and normalizes: a request body in, settings (or why not) out. Pure.

export type CollaboratorLevel = 'read' | 'write' | 'admin';

export interface RepoSettings {
  visibility: 'public' | 'private';
  /** user -> level. The owner (the repo id's first segment) and admin users are admins anyway. */
  collaborators: Record<string, CollaboratorLevel>;
  /** Full ref names (a bare branch name is stored as refs/heads/<name>), sorted, unique. */
  protectedBranches: string[];
}

export const DEFAULT_REPO_SETTINGS: RepoSettings = Object.freeze({
  visibility: 'private' as const,
  collaborators: Object.freeze({}) as Record<string, CollaboratorLevel>,
  protectedBranches: Object.freeze([]) as unknown as string[],
});

/** At most this many collaborators and protected branches per repo: the settings travel in every catalog. */
export const MAX_COLLABORATORS = 100;
export const MAX_PROTECTED_BRANCHES = 50;
export const MAX_PROTECTED_REF_CHARS = 255;

const LEVELS: readonly CollaboratorLevel[] = ['read', 'write', 'admin'];

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A protected branch as given (a branch name or a full ref) as the full ref it protects, or why not. */
export function protectedRef(name: string): { ref: string } | { problem: string } {
  if (name.length === 0 || name.length > MAX_PROTECTED_REF_CHARS) return { problem: `a protected branch is 1-${MAX_PROTECTED_REF_CHARS} characters` };
  const ref = name.startsWith('refs/') ? name : `refs/heads/${name}`;
  const problem = refNameProblem(ref);
  return problem === undefined ? { ref } : { problem: `protected branch '${name.slice(0, 80)}': ${problem}` };
}

/**
 * The settings a change request gives when applied to `current`, or why the request is invalid.
 * Fields left out keep their current value; `collaborators` and `protected_branches` replace the
 * whole list. Unknown fields are refused, so a typo never silently does nothing.
 */
export function applySettingsChange(current: RepoSettings, body: unknown): { settings: RepoSettings } | { problem: string } {
  if (!isRecord(body)) return { problem: 'the body must be a JSON object' };
  for (const key of Object.keys(body)) {
    if (key !== 'visibility' && key !== 'collaborators' && key !== 'protected_branches') {
      return { problem: `unknown field '${key.slice(0, 64)}': expected visibility, collaborators, protected_branches` };
    }
  }
  const next: RepoSettings = { visibility: current.visibility, collaborators: { ...current.collaborators }, protectedBranches: [...current.protectedBranches] };
  if (body.visibility !== undefined) {
    if (body.visibility !== 'public' && body.visibility !== 'private') return { problem: "visibility must be 'public' or 'private'" };
    next.visibility = body.visibility;
  }
  if (body.collaborators !== undefined) {
    if (!isRecord(body.collaborators)) return { problem: 'collaborators must be an object of user name to read, write or admin' };
    const entries = Object.entries(body.collaborators);
    if (entries.length > MAX_COLLABORATORS) return { problem: `at most ${MAX_COLLABORATORS} collaborators` };
    const collaborators: Record<string, CollaboratorLevel> = {};
    for (const [user, level] of entries) {
      const problem = userNameProblem(user);
      if (problem !== undefined) return { problem: `collaborator '${user.slice(0, 64)}': ${problem}` };
      if (typeof level !== 'string' || !(LEVELS as readonly string[]).includes(level)) return { problem: `collaborator '${user}': level must be read, write or admin` };
      collaborators[user] = level as CollaboratorLevel;
    }
    next.collaborators = Object.fromEntries(Object.entries(collaborators).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
  if (body.protected_branches !== undefined) {
    const list = body.protected_branches;
    if (!Array.isArray(list)) return { problem: 'protected_branches must be an array of branch names' };
    if (list.length > MAX_PROTECTED_BRANCHES) return { problem: `at most ${MAX_PROTECTED_BRANCHES} protected branches` };
    const refs = new Set<string>();
    for (const name of list) {
      if (typeof name !== 'string') return { problem: 'protected_branches must be an array of branch names' };
      const parsed = protectedRef(name);
      if ('problem' in parsed) return { problem: parsed.problem };
      refs.add(parsed.ref);
    }
    next.protectedBranches = [...refs].sort();
  }
  return { settings: next };
}

/** Settings as the API shows them. */
export function settingsView(settings: RepoSettings): { visibility: string; collaborators: Record<string, CollaboratorLevel>; protected_branches: string[] } {
  return { visibility: settings.visibility, collaborators: settings.collaborators, protected_branches: settings.protectedBranches };
}
