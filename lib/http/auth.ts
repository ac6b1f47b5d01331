import { createHash, createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sleep, systemClock, type Clock } from '../base/clock.js';
import { syncDir } from '../base/durable-fs.js';
import { QuorumGitError } from '../core/errors.js';
import type { Logger } from '../base/logger.js';
import { PART_MAX_CHARS, RESERVED_OWNERS, userNameProblem } from '../core/repo-id.js';

// Users and their credentials: the users file (AUTH_FILE), the same file on every node.
//
//   { "version": 1,
//     "users": { "alice": { "admin": false,
//                           "password": "$scrypt$ln=15,r=8,p=1$<salt>$<hash>",
//                           "tokens": [ { "name": "laptop", "sha256": "<hex>", "scopes": ["read", "write"],
//                                         "created": "<ISO time>", "expires": "<ISO time>" | null } ] } } }
//
// Passwords are scrypt hashes (node:crypto) in the PHC string format: a random salt per user and the
// cost parameters travel with the hash, so raising the cost later does not invalidate old hashes.
// Personal access tokens are 32 random bytes shown once, `qg_` + base64url, so a leaked one is easy
// to recognise (and to scan for); the file keeps only their SHA-256. A hash of 256 random bits needs
// no salt or slow hash: it cannot be guessed, only stolen, and then the token is revoked.
//
// The node reads the file at start (a missing or bad file stops it) and polls its identity (inode,
// size, mtime) on a timer: a changed file is read again, and a bad one is logged and ignored, the
// last good one staying in force. The CLI (lib/cli/auth-cli.ts) writes it atomically under a lock file.

export const SCOPES = ['read', 'write', 'admin'] as const;
/** A scope includes the ones before it: write can read, admin can write. */
export type Scope = (typeof SCOPES)[number];

export const TOKEN_PREFIX = 'qg_';
const TOKEN_BYTES = 32;
/** `qg_` and 32 bytes in base64url without padding. */
export const TOKEN_PATTERN = /^qg_[A-Za-z0-9_-]{43}$/;
export const TOKEN_NAME = /^[A-Za-z0-9._-]{1,64}$/;

export const USERS_FILE_MAX_BYTES = 8 * 1024 * 1024;
export const PASSWORD_MIN_CHARS = 8;
export const PASSWORD_MAX_BYTES = 1024;
/** Longer Authorization headers are refused unread. */
const AUTHORIZATION_MAX_CHARS = 4096;

export interface ScryptParams {
  /** log2 of N, scrypt's CPU/memory cost. */
  logN: number;
  r: number;
  p: number;
}

/** 2^15 x 8 x 128 bytes = 32 MiB and some 50-100 ms per hash. */
export const DEFAULT_SCRYPT: ScryptParams = { logN: 15, r: 8, p: 1 };
/** What a users file may ask for: a bad file must not make a node allocate gigabytes per request. */
const SCRYPT_MAX_MEMORY_BYTES = 256 * 1024 * 1024;
const SALT_BYTES = 16;
const KEY_BYTES = 32;

/** Password checks (scrypt) run at once per node; more wait in a queue of QUEUE_MAX, beyond that 503. */
export const PASSWORD_CHECKS_AT_ONCE = 2;
const PASSWORD_CHECK_QUEUE_MAX = 64;
/** A password that was right is remembered (as an HMAC under a per-process key) this long, so each git request of a clone does not pay scrypt again. */
export const PASSWORD_CACHE_TTL_MS = 5 * 60_000;
const PASSWORD_CACHE_MAX_ENTRIES = 1024;

export interface TokenRecord {
  name: string;
  /** SHA-256 of the token, lowercase hex. */
  sha256: string;
  scopes: Scope[];
  created: string;
  expires: string | null;
}

export interface UserRecord {
  admin: boolean;
  /** PHC scrypt string; null: token-only user. */
  password: string | null;
  tokens: TokenRecord[];
}

export interface UsersFile {
  version: 1;
  users: Record<string, UserRecord>;
}

/** Who a request comes from, once its credentials were checked. */
export interface Principal {
  user: string;
  admin: boolean;
  /** The most this credential may do: a password may do all its user may, a token no more than its scopes. */
  scope: Scope;
  via: 'password' | 'token';
  /** The token's name, for the audit log. */
  token?: string;
}

export type AuthOutcome =
  | { ok: true; principal: Principal | undefined }
  /** `reason` is for the log only; the client hears a generic "authentication failed". */
  | { ok: false; reason: string; user?: string };

export function emptyUsersFile(): UsersFile {
  return { version: 1, users: {} };
}

export function scopeAtLeast(have: Scope, need: Scope): boolean {
  return SCOPES.indexOf(have) >= SCOPES.indexOf(need);
}

export function topScope(scopes: readonly Scope[]): Scope {
  return scopes.reduce<Scope>((top, s) => (scopeAtLeast(s, top) ? s : top), 'read');
}

/** Parses `read,write`; throws an Error saying what is wrong. */
export function parseScopes(text: string): Scope[] {
  const scopes = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (scopes.length === 0) throw new Error(`scopes must be a comma-separated list of ${SCOPES.join(', ')}`);
  for (const s of scopes) if (!(SCOPES as readonly string[]).includes(s)) throw new Error(`unknown scope '${s}'; scopes are ${SCOPES.join(', ')}`);
  return SCOPES.filter((s) => scopes.includes(s));
}


export function passwordProblem(password: string): string | undefined {
  if ([...password].length < PASSWORD_MIN_CHARS) return `a password has at least ${PASSWORD_MIN_CHARS} characters`;
  if (Buffer.byteLength(password) > PASSWORD_MAX_BYTES) return `a password has at most ${PASSWORD_MAX_BYTES} bytes`;
  // A password that looks like a token would be checked as one.
  if (TOKEN_PATTERN.test(password)) return `a password may not look like a token (${TOKEN_PREFIX}...)`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Passwords

function b64(buf: Buffer): string {
  return buf.toString('base64').replace(/=+$/, '');
}

function scryptKey(password: string, salt: Buffer, params: ScryptParams, keyBytes: number): Promise<Buffer> {
  const N = 2 ** params.logN;
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keyBytes, { N, r: params.r, p: params.p, maxmem: 2 * 128 * N * params.r + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await scryptKey(password, salt, params, KEY_BYTES);
  return `$scrypt$ln=${params.logN},r=${params.r},p=${params.p}$${b64(salt)}$${b64(key)}`;
}

const PHC = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,88})\$([A-Za-z0-9+/]{16,88})$/;

/** The parts of a PHC scrypt string, or why it is not one we accept. */
export function parsePasswordHash(encoded: string): { params: ScryptParams; salt: Buffer; key: Buffer } | string {
  const m = PHC.exec(encoded);
  if (!m) return 'not a $scrypt$ln=..,r=..,p=..$salt$hash string';
  const params = { logN: Number(m[1]), r: Number(m[2]), p: Number(m[3]) };
  if (params.logN < 10 || params.r < 1 || params.p < 1 || params.p > 16) return 'scrypt parameters out of range (ln >= 10, r >= 1, 1 <= p <= 16)';
  if (128 * 2 ** params.logN * params.r > SCRYPT_MAX_MEMORY_BYTES) return `scrypt parameters need more than ${SCRYPT_MAX_MEMORY_BYTES} bytes`;
  const salt = Buffer.from(m[4]!, 'base64');
  const key = Buffer.from(m[5]!, 'base64');
  if (salt.length < 8 || key.length < 16) return 'salt or hash too short';
  return { params, salt, key };
}

export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const parsed = parsePasswordHash(encoded);
  if (typeof parsed === 'string') return false;
  const key = await scryptKey(password, parsed.salt, parsed.params, parsed.key.length);
  return timingSafeEqual(key, parsed.key);
}

// ---------------------------------------------------------------------------------------------
// Tokens

export function tokenHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** A new token: shown once to its owner; only `sha256` is stored. */
export function newToken(): { token: string; sha256: string } {
  const token = `${TOKEN_PREFIX}${randomBytes(TOKEN_BYTES).toString('base64url')}`;
  return { token, sha256: tokenHash(token) };
}

export function tokenExpired(token: TokenRecord, nowMs: number): boolean {
  return token.expires !== null && nowMs >= Date.parse(token.expires);
}

// ---------------------------------------------------------------------------------------------
// The file

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isTime(v: unknown): v is string {
  return typeof v === 'string' && v.length <= 64 && !Number.isNaN(Date.parse(v));
}

function onlyKeys(where: string, v: Record<string, unknown>, keys: readonly string[]): void {
  const extra = Object.keys(v).filter((k) => !keys.includes(k));
  if (extra.length > 0) throw new Error(`${where}: unknown field(s) ${extra.slice(0, 5).join(', ')}`);
  const missing = keys.filter((k) => !(k in v));
  if (missing.length > 0) throw new Error(`${where}: missing field(s) ${missing.join(', ')}`);
}

/** Checks a users file's text whole; throws an Error saying where it is wrong (never quoting a hash). */
export function parseUsersFile(text: string): UsersFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    // JSON.parse's own message quotes the text around the fault, which may be a password hash.
    throw new Error('not valid JSON');
  }
  if (!isObject(raw)) throw new Error('the file must hold a JSON object');
  onlyKeys('the file', raw, ['version', 'users']);
  if (raw.version !== 1) throw new Error('version must be 1');
  if (!isObject(raw.users)) throw new Error('users must be an object of user name to user');
  const users: Record<string, UserRecord> = {};
  const lowerNames = new Set<string>();
  const hashes = new Set<string>();
  for (const [name, u] of Object.entries(raw.users)) {
    const where = `users.${name.slice(0, PART_MAX_CHARS)}`;
    const problem = userNameProblem(name);
    if (problem) throw new Error(`${where}: ${problem}`);
    if (lowerNames.has(name.toLowerCase())) throw new Error(`${where}: another user has the same name but for case`);
    lowerNames.add(name.toLowerCase());
    if (!isObject(u)) throw new Error(`${where} must be an object`);
    onlyKeys(where, u, ['admin', 'password', 'tokens']);
    if (typeof u.admin !== 'boolean') throw new Error(`${where}.admin must be true or false`);
    if (u.password !== null) {
      if (typeof u.password !== 'string') throw new Error(`${where}.password must be a scrypt hash or null`);
      const parsed = parsePasswordHash(u.password);
      if (typeof parsed === 'string') throw new Error(`${where}.password: ${parsed}`);
    }
    if (!Array.isArray(u.tokens)) throw new Error(`${where}.tokens must be an array`);
    const tokens: TokenRecord[] = [];
    const tokenNames = new Set<string>();
    u.tokens.forEach((t: unknown, i: number) => {
      const at = `${where}.tokens[${i}]`;
      if (!isObject(t)) throw new Error(`${at} must be an object`);
      onlyKeys(at, t, ['name', 'sha256', 'scopes', 'created', 'expires']);
      if (typeof t.name !== 'string' || !TOKEN_NAME.test(t.name)) throw new Error(`${at}.name must be 1-64 characters of [A-Za-z0-9._-]`);
      if (tokenNames.has(t.name)) throw new Error(`${at}: the user has two tokens named ${t.name}`);
      tokenNames.add(t.name);
      if (typeof t.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(t.sha256)) throw new Error(`${at}.sha256 must be 64 lowercase hex digits`);
      if (hashes.has(t.sha256)) throw new Error(`${at}: the same token hash appears twice`);
      hashes.add(t.sha256);
      if (!Array.isArray(t.scopes) || t.scopes.length === 0 || !t.scopes.every((s) => (SCOPES as readonly unknown[]).includes(s))) {
        throw new Error(`${at}.scopes must be a non-empty list of ${SCOPES.join(', ')}`);
      }
      if (!isTime(t.created)) throw new Error(`${at}.created must be an ISO time`);
      if (t.expires !== null && !isTime(t.expires)) throw new Error(`${at}.expires must be an ISO time or null`);
      tokens.push({ name: t.name, sha256: t.sha256, scopes: SCOPES.filter((s) => (t.scopes as unknown[]).includes(s)), created: t.created, expires: t.expires });
    });
    users[name] = { admin: u.admin, password: u.password, tokens };
  }
  return { version: 1, users };
}

export function serializeUsersFile(file: UsersFile): string {
  return `${JSON.stringify(file, null, 2)}\n`;
}

/** Reads and checks the file; throws (ENOENT included) when it cannot be used. */
export async function readUsersFile(file: string): Promise<UsersFile> {
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    if (size > USERS_FILE_MAX_BYTES) throw new Error(`the file is larger than ${USERS_FILE_MAX_BYTES} bytes`);
    return parseUsersFile(await handle.readFile('utf8'));
  } finally {
    await handle.close();
  }
}

/**
 * Replaces the file so that a crash leaves the old content or the new, whole: a private temp file
 * (mode 0600: it holds password hashes), fsynced, renamed over the file, then the directory fsynced.
 */
export async function writeUsersFile(file: string, content: UsersFile): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await fs.open(tmp, 'wx', 0o600);
  try {
    await handle.writeFile(serializeUsersFile(content));
    await handle.sync();
  } catch (err) {
    await handle.close();
    await fs.rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
  await syncDir(path.dirname(file));
}

const LOCK_WAIT_MS = 5000;
const LOCK_POLL_MS = 50;

/**
 * Read, change, write under `<file>.lock` (created exclusively), so two CLI runs at once never lose
 * one's change. A missing file reads as empty. `change` throws to leave the file as it was.
 */
export async function updateUsersFile<T>(file: string, change: (users: UsersFile) => T | Promise<T>, clock: Clock = systemClock): Promise<T> {
  const lock = `${file}.lock`;
  const deadline = clock.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      await (await fs.open(lock, 'wx', 0o600)).close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (clock.now() >= deadline) throw new Error(`${lock} exists: another quorum-git is changing the users file (if none is, remove the lock file)`);
      // A CLI run waits here with nothing else pending: the timer must hold the process open.
      await sleep(clock, LOCK_POLL_MS, { keepAlive: true });
    }
  }
  try {
    let current: UsersFile;
    try {
      current = await readUsersFile(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`${file}: ${(err as Error).message}`);
      current = emptyUsersFile();
    }
    const result = await change(current);
    await writeUsersFile(file, current);
    return result;
  } finally {
    await fs.rm(lock, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Credentials of a request

export type Credentials = { scheme: 'basic'; user: string; secret: string } | { scheme: 'bearer'; token: string };

/** The credentials in an Authorization header: undefined when there is none, a string saying why when it is malformed. */
export function parseAuthorization(header: string | string[] | undefined): Credentials | undefined | string {
  if (header === undefined) return undefined;
  if (Array.isArray(header)) return 'more than one Authorization header';
  if (header.length > AUTHORIZATION_MAX_CHARS) return 'Authorization header too long';
  const space = header.indexOf(' ');
  const scheme = (space === -1 ? header : header.slice(0, space)).toLowerCase();
  const value = space === -1 ? '' : header.slice(space + 1).trim();
  if (scheme === 'bearer') {
    if (value === '') return 'empty bearer token';
    return { scheme: 'bearer', token: value };
  }
  if (scheme === 'basic') {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(value)) return 'Basic credentials are not base64';
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon === -1) return 'Basic credentials without a colon';
    return { scheme: 'basic', user: decoded.slice(0, colon), secret: decoded.slice(colon + 1) };
  }
  return 'unsupported authorization scheme (use Basic or Bearer)';
}

interface Snapshot {
  users: UsersFile;
  byToken: Map<string, { user: string; token: TokenRecord }>;
}

function snapshotOf(users: UsersFile): Snapshot {
  const byToken = new Map<string, { user: string; token: TokenRecord }>();
  for (const [user, record] of Object.entries(users.users)) for (const token of record.tokens) byToken.set(token.sha256, { user, token });
  return { users, byToken };
}

export interface UserDirectoryOptions {
  file: string;
  clock: Clock;
  logger: Logger;
  /** How often the file's identity (inode, size, mtime) is looked at. */
  reloadIntervalMs: number;
}

/**
 * The users file as the node sees it: checks credentials, and follows the file as it changes. A
 * password check is scrypt, run on libuv's pool (never on the event loop), at most
 * PASSWORD_CHECKS_AT_ONCE at a time: a flood of guesses costs the node two threads, not all of them.
 */
export class UserDirectory {
  private readonly options: UserDirectoryOptions;
  private snapshot: Snapshot;
  /** The identity of the file last read, good or bad: a bad file is reported once, not every poll. */
  private signature: string;
  private timer: unknown;
  private stopped = false;
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly cacheKey = randomBytes(32);
  private readonly passed = new Map<string, number>();
  /** Checked against when the user does not exist, so the answer takes as long as for a wrong password. */
  private dummy: { params: string; hash: Promise<string> } | undefined;

  private constructor(options: UserDirectoryOptions, snapshot: Snapshot, signature: string) {
    this.options = options;
    this.snapshot = snapshot;
    this.signature = signature;
  }

  /** Reads the file; throws with a message for the operator when it is missing or bad. */
  static async open(options: UserDirectoryOptions): Promise<UserDirectory> {
    let users: UsersFile;
    let signature: string;
    try {
      signature = await fileSignature(options.file);
      users = await readUsersFile(options.file);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOENT') throw new Error(`AUTH_FILE ${options.file} does not exist; create it with \`quorum-git user add <name>\``);
      throw new Error(`AUTH_FILE ${options.file}: ${e.message}`);
    }
    return new UserDirectory(options, snapshotOf(users), signature);
  }

  get userNames(): string[] {
    return Object.keys(this.snapshot.users.users);
  }

  /** Starts following the file. */
  start(): void {
    this.stopped = false;
    const tick = (): void => {
      this.timer = this.options.clock.setTimeout(() => {
        void this.reloadIfChanged().finally(() => {
          if (!this.stopped) tick();
        });
      }, this.options.reloadIntervalMs);
    };
    tick();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) this.options.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Reads the file again if it changed. True when a new version is in force. Never throws. */
  async reloadIfChanged(): Promise<boolean> {
    const { file, logger } = this.options;
    let signature: string;
    try {
      signature = await fileSignature(file);
    } catch (err) {
      signature = `error:${(err as NodeJS.ErrnoException).code ?? 'unknown'}`;
      if (signature !== this.signature) logger.error('users file cannot be read; keeping the last good one', { file, err: (err as Error).message });
      this.signature = signature;
      return false;
    }
    if (signature === this.signature) return false;
    this.signature = signature;
    try {
      const users = await readUsersFile(file);
      this.snapshot = snapshotOf(users);
      logger.info('users file reloaded', { file, users: Object.keys(users.users).length });
      return true;
    } catch (err) {
      logger.error('users file is invalid; keeping the last good one', { file, err: (err as Error).message });
      return false;
    }
  }

  /** Checks the credentials of an Authorization header. No header: ok, anonymous. */
  async authenticate(header: string | string[] | undefined): Promise<AuthOutcome> {
    const credentials = parseAuthorization(header);
    if (credentials === undefined) return { ok: true, principal: undefined };
    if (typeof credentials === 'string') return { ok: false, reason: credentials };
    if (credentials.scheme === 'bearer') return this.checkToken(credentials.token, undefined);
    const user = credentials.user.slice(0, PART_MAX_CHARS + 1);
    // git sends a token as the password of Basic (its credential helpers know no other way).
    if (TOKEN_PATTERN.test(credentials.secret)) return this.checkToken(credentials.secret, user);
    return this.checkPassword(user, credentials.secret);
  }

  private checkToken(token: string, claimedUser: string | undefined): AuthOutcome {
    const failed = (reason: string): AuthOutcome => ({ ok: false, reason, ...(claimedUser === undefined ? {} : { user: claimedUser }) });
    if (!TOKEN_PATTERN.test(token)) return failed('not a token');
    const digest = tokenHash(token);
    const found = this.snapshot.byToken.get(digest);
    // The map found it by this very digest; the constant-time compare keeps it so if lookups change.
    if (found === undefined || !timingSafeEqual(Buffer.from(digest, 'hex'), Buffer.from(found.token.sha256, 'hex'))) return failed('unknown token');
    if (claimedUser !== undefined && claimedUser !== found.user) return failed('token of another user');
    if (tokenExpired(found.token, this.options.clock.now())) return { ok: false, reason: `token ${found.token.name} expired`, user: found.user };
    const record = this.snapshot.users.users[found.user]!;
    return { ok: true, principal: { user: found.user, admin: record.admin, scope: topScope(found.token.scopes), via: 'token', token: found.token.name } };
  }

  private async checkPassword(user: string, password: string): Promise<AuthOutcome> {
    const record = Object.hasOwn(this.snapshot.users.users, user) ? this.snapshot.users.users[user] : undefined;
    if (Buffer.byteLength(password) > PASSWORD_MAX_BYTES) return { ok: false, reason: 'password too long', user };
    // git's second try when the URL names a user but no password; it asks for one after this 401.
    if (password === '') return { ok: false, reason: 'empty password', user };
    const encoded = record?.password ?? null;
    const cacheKey = createHmac('sha256', this.cacheKey).update(`${user}\0${password}\0${encoded ?? ''}`).digest('base64');
    const now = this.options.clock.now();
    const until = this.passed.get(cacheKey);
    if (record !== undefined && encoded !== null && until !== undefined && until > now) {
      return { ok: true, principal: { user, admin: record.admin, scope: 'admin', via: 'password' } };
    }
    const right = await this.limited(async () => {
      if (encoded === null) {
        await verifyPassword(password, await this.dummyHash());
        return false;
      }
      return verifyPassword(password, encoded);
    });
    if (!right || record === undefined) return { ok: false, reason: record === undefined ? 'unknown user' : encoded === null ? 'user has no password' : 'wrong password', user };
    this.passed.delete(cacheKey);
    this.passed.set(cacheKey, now + PASSWORD_CACHE_TTL_MS);
    if (this.passed.size > PASSWORD_CACHE_MAX_ENTRIES) this.passed.delete(this.passed.keys().next().value!);
    return { ok: true, principal: { user, admin: record.admin, scope: 'admin', via: 'password' } };
  }

  /** A hash of a random password at the cost the file's (first) hash has, so a miss costs what a wrong password does. */
  private dummyHash(): Promise<string> {
    const sample = Object.values(this.snapshot.users.users).find((u) => u.password !== null)?.password;
    const parsed = sample === undefined || sample === null ? undefined : parsePasswordHash(sample);
    const params = parsed === undefined || typeof parsed === 'string' ? DEFAULT_SCRYPT : parsed.params;
    const key = `${params.logN},${params.r},${params.p}`;
    if (this.dummy?.params !== key) this.dummy = { params: key, hash: hashPassword(randomBytes(16).toString('hex'), params) };
    return this.dummy.hash;
  }

  private async limited<T>(task: () => Promise<T>): Promise<T> {
    if (this.running >= PASSWORD_CHECKS_AT_ONCE) {
      if (this.waiting.length >= PASSWORD_CHECK_QUEUE_MAX) throw new QuorumGitError('auth_busy', 'too many password checks at once; retry in a moment (tokens are checked without waiting)');
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running += 1;
    }
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running -= 1;
    }
  }
}

async function fileSignature(file: string): Promise<string> {
  const st = await fs.stat(file);
  return `${st.ino}:${st.size}:${st.mtimeMs}`;
}
