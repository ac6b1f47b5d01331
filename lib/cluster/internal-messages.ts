import { NO_VOTE_CODES, QuorumGitError } from '../core/errors.js';
import { DEFAULT_REPO_SETTINGS, applySettingsChange, type RepoSettings } from '../core/repo-settings.js';
import { PACK_FILE } from '../git/git-refs.js';
import type { PeerInfo, RepoStateAnswer } from './peer-client.js';
import { TXN_ID, formatRepoId, parseRepoId, refNameProblem } from '../core/repo-id.js';
import type { CatalogEntry, NoVoteCode, NodeId, QueryAnswer, QueryOutcome, RefUpdate, RepoFacts, RepoVersion, TxnMessage, TxnOp, Vote } from '../core/txn-core.js';

// Peers trust no message blindly (issue 8). Every message a node receives from another node, and
// every answer it gets back, is untrusted JSON until it has been through here: the result is a typed
// value or a QuorumGitError (a 400 for a request; for an answer, the peer counts as not answering).
// Repo ids go through the public API's validator (lib/core/repo-id.ts), ref names through the hook's
// (push-service refNameProblem), transaction ids through the router's: one validator for each kind
// of name, whoever sends it. Versions must be plausible (see VERSION_MAX).
//
// The key lists below are checked against the protocol's types at compile time: a field added to a
// TxnMessage, TxnOp, Vote or answer type fails the build here until the parser knows it, rather than
// being dropped or refused at run time.

/**
 * The largest epoch or generation believed: a trillion creates, deletes or pushes of one repo. Far
 * below Number.MAX_SAFE_INTEGER, so `epoch + 1` stays exact and a forged huge version cannot leave a
 * name that no later create could ever exceed.
 */
export const VERSION_MAX = 2 ** 40;
/** Acceptors named in a commit: at most one per node of the cluster. */
const NODES_MAX = 64;
/** A no vote's detail is text for logs; longer is junk. */
const DETAIL_MAX_CHARS = 2000;
/** A prepare carries one pack: its .pack, .idx and maybe .rev. */
const INLINE_FILES_MAX = 3;
const OID = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const DIGEST = /^[0-9a-f]{64}$/;
const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;

type Exactly<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Prepare = Extract<TxnMessage, { type: 'prepare' }>;
type Commit = Extract<TxnMessage, { type: 'commitTxn' }>;
type Abort = Extract<TxnMessage, { type: 'abortTxn' }>;
type PushOp = Extract<TxnOp, { kind: 'push' }>;
type CreateOp = Extract<TxnOp, { kind: 'create' }>;
type DeleteOp = Extract<TxnOp, { kind: 'delete' }>;
type SettingsOp = Extract<TxnOp, { kind: 'settings' }>;

const PREPARE_KEYS = ['type', 'txnId', 'op', 'coordinator'] as const;
const COMMIT_KEYS = ['type', 'txnId', 'epoch', 'generation', 'final', 'acceptors'] as const;
const ABORT_KEYS = ['type', 'txnId'] as const;
const CREATE_OP_KEYS = ['kind', 'repoId', 'settings'] as const;
const DELETE_OP_KEYS = ['kind', 'repoId'] as const;
const SETTINGS_OP_KEYS = ['kind', 'repoId', 'settings', 'base'] as const;
const SETTINGS_KEYS = ['visibility', 'collaborators', 'protectedBranches'] as const;
const SETTINGS_BASE_KEYS = ['epoch', 'settingsVersion'] as const;
const PUSH_OP_KEYS = ['kind', 'repoId', 'updates', 'base', 'head', 'settingsVersion'] as const;
const CATALOG_KEYS = ['state', 'epoch', 'generation', 'settings', 'settingsVersion'] as const;
const UPDATE_KEYS = ['ref', 'old', 'new'] as const;
const VERSION_KEYS = ['epoch', 'generation'] as const;
const QUERY_OUTCOMES = ['committed', 'accepted', 'aborted', 'prepared', 'refused', 'pending'] as const;
const QUERY_KEYS = ['outcome', 'epoch', 'generation', 'acceptors', 'repo'] as const;
const REPO_FACTS_KEYS = ['epoch', 'generation', 'settingsVersion', 'held'] as const;

// Compile-time: each list is exactly its type's keys (or members).
const typesChecked: [
  Exactly<keyof Prepare, (typeof PREPARE_KEYS)[number]>,
  Exactly<keyof Commit, (typeof COMMIT_KEYS)[number]>,
  Exactly<keyof Abort, (typeof ABORT_KEYS)[number]>,
  Exactly<keyof CreateOp, (typeof CREATE_OP_KEYS)[number]>,
  Exactly<keyof DeleteOp, (typeof DELETE_OP_KEYS)[number]>,
  Exactly<keyof SettingsOp, (typeof SETTINGS_OP_KEYS)[number]>,
  Exactly<keyof RepoSettings, (typeof SETTINGS_KEYS)[number]>,
  Exactly<keyof SettingsOp['base'], (typeof SETTINGS_BASE_KEYS)[number]>,
  Exactly<keyof PushOp, (typeof PUSH_OP_KEYS)[number]>,
  Exactly<keyof RefUpdate, (typeof UPDATE_KEYS)[number]>,
  Exactly<keyof RepoVersion, (typeof VERSION_KEYS)[number]>,
  Exactly<NoVoteCode, (typeof NO_VOTE_CODES)[number]>,
  Exactly<QueryOutcome, (typeof QUERY_OUTCOMES)[number]>,
  Exactly<keyof Omit<QueryAnswer, 'effects'>, (typeof QUERY_KEYS)[number]>,
  Exactly<keyof RepoFacts, (typeof REPO_FACTS_KEYS)[number]>,
  Exactly<keyof CatalogEntry, (typeof CATALOG_KEYS)[number]>,
  Exactly<TxnMessage['type'], 'prepare' | 'commitTxn' | 'abortTxn'>,
  Exactly<TxnOp['kind'], 'create' | 'delete' | 'push' | 'settings'>,
] = [true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true];
void typesChecked;

function bad(message: string): QuorumGitError {
  return new QuorumGitError('invalid_body', message);
}

/** A short, printable rendering of untrusted input for an error message. */
function shown(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}

function record(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad(`${what} must be a JSON object`);
  return value as Record<string, unknown>;
}

function onlyKeys(obj: Record<string, unknown>, allowed: readonly string[], what: string): void {
  const unknown = Object.keys(obj).filter((k) => !allowed.includes(k));
  if (unknown.length > 0) throw bad(`${what}: unknown field(s) ${shown(unknown.slice(0, 5))}`);
}

/** An epoch or generation: an integer in [0, VERSION_MAX]. */
export function versionNumber(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > VERSION_MAX) {
    throw bad(`${what} must be an integer from 0 to ${VERSION_MAX}, got ${shown(value)}`);
  }
  return value;
}

function repoVersion(value: unknown, what: string): RepoVersion {
  const v = record(value, what);
  onlyKeys(v, VERSION_KEYS, what);
  return { epoch: versionNumber(v.epoch, `${what}.epoch`), generation: versionNumber(v.generation, `${what}.generation`) };
}

/** A node's URL as configurations spell it (an origin: scheme, host, port); one of `nodes` when given. */
export function nodeUrl(value: unknown, what: string, nodes?: ReadonlySet<NodeId>): NodeId {
  if (typeof value !== 'string' || value.length > 300) throw bad(`${what} must be a node URL`);
  let origin: string;
  try {
    const url = new URL(value);
    origin = url.protocol === 'http:' || url.protocol === 'https:' ? url.origin : '';
  } catch {
    origin = '';
  }
  if (origin !== value) throw bad(`${what} must be a node URL like http://host:port, got ${shown(value)}`);
  if (nodes && !nodes.has(value)) throw bad(`${what} ${shown(value)} is not a node of this cluster`);
  return value;
}

/** The public API's validator, for ids that come from peers: `owner/name`, each part checked. */
export function repoIdOf(value: unknown): string {
  return formatRepoId(parseRepoId(value));
}

function txnIdOf(value: unknown): string {
  if (typeof value !== 'string' || !TXN_ID.test(value)) throw bad(`txnId must be 1-128 characters of [A-Za-z0-9._-], not '.' or '..', got ${shown(value)}`);
  return value;
}

function refName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length > 1024) throw bad(`${what} must be a ref name`);
  const problem = refNameProblem(value);
  if (problem !== undefined) throw bad(`${what} ${shown(value)}: ${problem}`);
  return value;
}

function oid(value: unknown, what: string): string {
  if (typeof value !== 'string' || !OID.test(value)) throw bad(`${what} must be an object id (40 or 64 hex digits), got ${shown(value)}`);
  return value;
}

function refUpdate(value: unknown, what: string): RefUpdate {
  const u = record(value, what);
  onlyKeys(u, UPDATE_KEYS, what);
  return { ref: refName(u.ref, `${what}.ref`), old: oid(u.old, `${what}.old`), new: oid(u.new, `${what}.new`) };
}

function txnOp(value: unknown, maxRefsPerPush: number): TxnOp {
  const op = record(value, 'op');
  if (op.kind === 'delete') {
    onlyKeys(op, DELETE_OP_KEYS, 'op');
    return { kind: 'delete', repoId: repoIdOf(op.repoId) };
  }
  if (op.kind === 'create') {
    onlyKeys(op, CREATE_OP_KEYS, 'op');
    return { kind: 'create', repoId: repoIdOf(op.repoId), ...(op.settings === undefined ? {} : { settings: repoSettings(op.settings, 'op.settings') }) };
  }
  if (op.kind === 'settings') {
    onlyKeys(op, SETTINGS_OP_KEYS, 'op');
    const base = record(op.base, 'op.base');
    onlyKeys(base, SETTINGS_BASE_KEYS, 'op.base');
    return {
      kind: 'settings',
      repoId: repoIdOf(op.repoId),
      settings: repoSettings(op.settings, 'op.settings'),
      base: { epoch: versionNumber(base.epoch, 'op.base.epoch'), settingsVersion: versionNumber(base.settingsVersion, 'op.base.settingsVersion') },
    };
  }
  if (op.kind !== 'push') throw bad(`op.kind must be create, delete, push or settings, got ${shown(op.kind)}`);
  onlyKeys(op, PUSH_OP_KEYS, 'op');
  const repoId = repoIdOf(op.repoId);
  if (!Array.isArray(op.updates) || op.updates.length === 0 || op.updates.length > maxRefsPerPush) {
    throw bad(`op.updates must list 1 to ${maxRefsPerPush} ref updates`);
  }
  const updates = op.updates.map((u, i) => refUpdate(u, `op.updates[${i}]`));
  if (new Set(updates.map((u) => u.ref)).size !== updates.length) throw bad('op.updates names a ref twice');
  const base = repoVersion(op.base, 'op.base');
  return {
    kind: 'push',
    repoId,
    updates,
    base,
    ...(op.head === undefined ? {} : { head: refName(op.head, 'op.head') }),
    ...(op.settingsVersion === undefined ? {} : { settingsVersion: versionNumber(op.settingsVersion, 'op.settingsVersion') }),
  };
}

/**
 * A repo's settings as they travel between nodes (a create's or settings change's op, a catalog
 * entry): the exact stored shape, each field through the API's own validation (repo-settings.ts), and
 * already normalized (what a node stores is what it sends).
 */
function repoSettings(value: unknown, what: string): RepoSettings {
  const v = record(value, what);
  onlyKeys(v, SETTINGS_KEYS, what);
  const checked = applySettingsChange(DEFAULT_REPO_SETTINGS, { visibility: v.visibility, collaborators: v.collaborators, protected_branches: v.protectedBranches });
  if ('problem' in checked) throw bad(`${what}: ${checked.problem}`);
  return checked.settings;
}

function inlineFilesOf(value: unknown): Record<string, Buffer> {
  const files = record(value, 'inlineFiles');
  const names = Object.keys(files);
  if (names.length === 0 || names.length > INLINE_FILES_MAX) throw bad(`inlineFiles must hold 1 to ${INLINE_FILES_MAX} pack files`);
  const out: Record<string, Buffer> = {};
  for (const name of names) {
    const content = files[name];
    if (!PACK_FILE.test(name)) throw bad(`inlineFiles: not a pack file name: ${shown(name)}`);
    if (typeof content !== 'string' || !BASE64.test(content)) throw bad(`inlineFiles.${name} must be base64`);
    out[name] = Buffer.from(content, 'base64');
  }
  return out;
}

export interface MessageLimits {
  maxRefsPerPush: number;
  /** Every node of the cluster: a coordinator or acceptor named in a message must be one of them. */
  nodes: readonly NodeId[];
}

/**
 * A 2PC message posted to /internal/txn/<step>, from its untrusted JSON body. `expected` is the type
 * the route takes. Throws QuorumGitError (400) for anything that is not exactly such a message.
 */
export function parseTxnMessage(body: unknown, expected: TxnMessage['type'], limits: MessageLimits): { msg: TxnMessage; inlineFiles?: Record<string, Buffer> } {
  const m = record(body, 'the message');
  if (m.type !== expected) throw bad(`expected a ${expected} message, got type ${shown(m.type)}`);
  const nodes = new Set(limits.nodes);
  switch (expected) {
    case 'prepare': {
      onlyKeys(m, [...PREPARE_KEYS, 'inlineFiles'], 'prepare');
      const msg: TxnMessage = {
        type: 'prepare',
        txnId: txnIdOf(m.txnId),
        op: txnOp(m.op, limits.maxRefsPerPush),
        coordinator: nodeUrl(m.coordinator, 'coordinator', nodes),
      };
      if (m.inlineFiles === undefined) return { msg };
      if (msg.op.kind !== 'push') throw bad('inlineFiles come only with a push');
      return { msg, inlineFiles: inlineFilesOf(m.inlineFiles) };
    }
    case 'commitTxn': {
      onlyKeys(m, COMMIT_KEYS, 'commitTxn');
      if (m.final !== undefined && typeof m.final !== 'boolean') throw bad('final must be true or false');
      let acceptors: NodeId[] | undefined;
      if (m.acceptors !== undefined) {
        if (!Array.isArray(m.acceptors) || m.acceptors.length > NODES_MAX) throw bad(`acceptors must list at most ${NODES_MAX} nodes`);
        acceptors = m.acceptors.map((a, i) => nodeUrl(a, `acceptors[${i}]`, nodes));
        if (new Set(acceptors).size !== acceptors.length) throw bad('acceptors names a node twice');
      }
      return {
        msg: {
          type: 'commitTxn',
          txnId: txnIdOf(m.txnId),
          epoch: versionNumber(m.epoch, 'epoch'),
          generation: versionNumber(m.generation, 'generation'),
          ...(m.final === undefined ? {} : { final: m.final }),
          ...(acceptors === undefined ? {} : { acceptors }),
        },
      };
    }
    case 'abortTxn':
      onlyKeys(m, ABORT_KEYS, 'abortTxn');
      return { msg: { type: 'abortTxn', txnId: txnIdOf(m.txnId) } };
  }
}

/**
 * Plausibility of a create or delete commit that arrives as a message: its epoch is one above this
 * replica's (`current`, the version it voted with). A larger step is what a forged commit looks like
 * (the "delete at epoch 99" of issue 8); a replica that was really that far behind is refused here
 * and settles the transaction by recovery instead, which asks the coordinator named in the prepare.
 * Pushes need no rule here: the core takes only base + 1 (commitVersionProblem). undefined when fine.
 */
export function commitEpochProblem(op: TxnOp | undefined, current: RepoVersion, epoch: number): string | undefined {
  if (op === undefined || op.kind === 'push') return undefined;
  if (epoch > current.epoch + 1) return `a ${op.kind} commit at epoch ${epoch} is not plausible: this replica is at epoch ${current.epoch}, and a ${op.kind} moves it by one`;
  return undefined;
}

// Answers from peers -------------------------------------------------------------------------------

/** A vote (the answer to a prepare, commit or abort). */
export function parseVote(value: unknown): Vote {
  const v = record(value, 'a vote');
  if (v.vote === 'yes') return { vote: 'yes', epoch: versionNumber(v.epoch, 'epoch'), generation: versionNumber(v.generation, 'generation') };
  if (v.vote !== 'no') throw bad(`a vote must be yes or no, got ${shown(v.vote)}`);
  if (!(NO_VOTE_CODES as readonly unknown[]).includes(v.code)) throw bad(`unknown no-vote code ${shown(v.code)}`);
  if (v.detail !== undefined && typeof v.detail !== 'string') throw bad('a vote detail must be text');
  return { vote: 'no', code: v.code as NoVoteCode, ...(v.detail === undefined ? {} : { detail: (v.detail as string).slice(0, DETAIL_MAX_CHARS) }) };
}

/** The answer to GET /internal/txn/<id> (recovery). */
export function parseQueryAnswer(value: unknown): Omit<QueryAnswer, 'effects'> {
  const q = record(value, 'a query answer');
  if (!(QUERY_OUTCOMES as readonly unknown[]).includes(q.outcome)) throw bad(`unknown outcome ${shown(q.outcome)}`);
  const out: Omit<QueryAnswer, 'effects'> = { outcome: q.outcome as QueryOutcome };
  if (q.epoch !== undefined) out.epoch = versionNumber(q.epoch, 'epoch');
  if (q.generation !== undefined) out.generation = versionNumber(q.generation, 'generation');
  if (q.acceptors !== undefined) {
    if (!Array.isArray(q.acceptors) || q.acceptors.length > NODES_MAX) throw bad(`acceptors must list at most ${NODES_MAX} nodes`);
    out.acceptors = q.acceptors.map((a, i) => nodeUrl(a, `acceptors[${i}]`));
  }
  if (q.repo !== undefined) {
    const r = record(q.repo, 'the repo facts');
    onlyKeys(r, REPO_FACTS_KEYS, 'the repo facts');
    if (typeof r.held !== 'boolean') throw bad('repo.held must be true or false');
    out.repo = { epoch: versionNumber(r.epoch, 'epoch'), generation: versionNumber(r.generation, 'generation'), settingsVersion: versionNumber(r.settingsVersion, 'settingsVersion'), held: r.held };
  }
  return out;
}

/** Why a peer's catalog entry is not believed, or undefined. */
export function catalogEntryProblem(repoId: string, entry: unknown): string | undefined {
  try {
    repoIdOf(repoId);
    const e = record(entry, 'entry');
    if (e.state !== 'live' && e.state !== 'deleted') return `unknown state ${shown(e.state)}`;
    onlyKeys(e, CATALOG_KEYS, 'entry');
    versionNumber(e.epoch, 'epoch');
    if (e.generation !== undefined) versionNumber(e.generation, 'generation');
    if (e.settingsVersion !== undefined) versionNumber(e.settingsVersion, 'settingsVersion');
    if (e.settings !== undefined) repoSettings(e.settings, 'settings');
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * A peer's catalog (GET /internal/catalog). Entries with an invalid id or an implausible version are
 * dropped (and returned, for the log); the rest of the catalog is still used. Not a catalog at all: throws.
 */
export function parseCatalog(value: unknown): { repos: Record<string, CatalogEntry>; dropped: { repoId: string; problem: string }[] } {
  const body = record(value, 'a catalog answer');
  const entries = record(body.repos, 'repos');
  const repos: Record<string, CatalogEntry> = {};
  const dropped: { repoId: string; problem: string }[] = [];
  for (const [repoId, entry] of Object.entries(entries)) {
    const problem = catalogEntryProblem(repoId, entry);
    if (problem !== undefined) {
      dropped.push({ repoId: shown(repoId), problem });
      continue;
    }
    const e = entry as CatalogEntry;
    repos[repoId] = {
      state: e.state,
      epoch: e.epoch,
      generation: e.generation ?? 0,
      ...(e.settings === undefined ? {} : { settings: repoSettings(e.settings, 'settings') }),
      ...(e.settingsVersion === undefined ? {} : { settingsVersion: e.settingsVersion }),
    };
  }
  return { repos, dropped };
}

/** A peer's answer about one repo (GET /internal/repo-state/<id>), which must be about `repoId`. */
export function parseRepoState(value: unknown, repoId: string): RepoStateAnswer {
  const s = record(value, 'a repo-state answer');
  if (s.repo_id !== repoId) throw bad(`a repo-state answer about ${shown(s.repo_id)}, asked about ${repoId}`);
  if (typeof s.live !== 'boolean') throw bad('live must be true or false');
  const out: RepoStateAnswer = { repo_id: repoId, live: s.live, epoch: versionNumber(s.epoch, 'epoch'), generation: versionNumber(s.generation, 'generation') };
  if (s.refs !== undefined) {
    const refs = record(s.refs, 'refs');
    out.refs = {};
    for (const [ref, value] of Object.entries(refs)) out.refs[refName(ref, 'a ref')] = oid(value, `refs[${shown(ref)}]`);
  }
  if (s.head !== undefined) out.head = refName(s.head, 'head');
  if (s.digest !== undefined) {
    if (typeof s.digest !== 'string' || !DIGEST.test(s.digest)) throw bad('digest must be 64 hex digits');
    out.digest = s.digest;
  }
  for (const flag of ['locked', 'in_doubt'] as const) {
    if (s[flag] === undefined) continue;
    if (typeof s[flag] !== 'boolean') throw bad(`${flag} must be true or false`);
    (out as unknown as Record<string, boolean>)[flag] = s[flag];
  }
  return out;
}

/**
 * The body of POST /internal/membership: `{ node: <url>, dead: boolean }`. Its shape only: whether
 * the node is one of the cluster's, and may be declared dead, is the driver's to say (409).
 */
export function parseMembership(body: unknown): { node: NodeId; dead: boolean } {
  const b = body as { node?: unknown; dead?: unknown } | null;
  if (typeof b !== 'object' || b === null || typeof b.node !== 'string' || b.node.length > 2048 || typeof b.dead !== 'boolean') {
    throw bad('expected { "node": "<node URL>", "dead": true|false }');
  }
  return { node: b.node, dead: b.dead };
}

/** The answer to GET /internal/ping. */
export function parsePeerInfo(value: unknown): PeerInfo {
  const p = record(value, 'a ping answer');
  if (typeof p.server_id !== 'string' || !SERVER_ID.test(p.server_id)) throw bad('server_id must be 1-64 characters of [A-Za-z0-9._-]');
  return { server_id: p.server_id, url: nodeUrl(p.url, 'url') };
}
