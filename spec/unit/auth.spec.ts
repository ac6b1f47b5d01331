import { expect } from 'chai';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import winston from 'winston';
import {
  PASSWORD_CHECKS_AT_ONCE,
  TOKEN_PATTERN,
  UserDirectory,
  hashPassword,
  newToken,
  parseAuthorization,
  parsePasswordHash,
  parseUsersFile,
  serializeUsersFile,
  tokenHash,
  verifyPassword,
  writeUsersFile,
  type Principal,
  type UsersFile,
} from '../../lib/http/auth.js';
import { tokenCommand, userCommand, type CliIo } from '../../lib/cli/auth-cli.js';
import { PRIVATE_REPO_ACCESS, decideCreate, decideRepo, requirement, type RepoAccess } from '../../lib/http/authz.js';
import { route } from '../../lib/http/router.js';
import type { Clock } from '../../lib/base/clock.js';
import { QuorumGitError } from '../../lib/core/errors.js';

// The users file and the rules: password hashing, tokens, expiry, scopes, the file's checks, its
// reload (a bad file keeps the last good one), the access decisions, and the CLI that edits it.
// Hashes here use scrypt's lowest accepted cost (ln=10) so the spec stays fast; the parameters
// travel with each hash, so the code under test is the same.

const CHEAP = { logN: 10, r: 8, p: 1 };

class ManualClock implements Clock {
  nowMs = Date.parse('2025-01-01T00:00:00Z');
  timers: { fn: () => void; at: number }[] = [];
  now(): number {
    return this.nowMs;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const timer = { fn, at: this.nowMs + ms };
    this.timers.push(timer);
    return timer;
  }
  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((t) => t !== handle);
  }
  /** Moves time on and runs the timers that came due. */
  advance(ms: number): void {
    this.nowMs += ms;
    const due = this.timers.filter((t) => t.at <= this.nowMs);
    this.timers = this.timers.filter((t) => t.at > this.nowMs);
    for (const t of due) t.fn();
  }
}

/** A logger whose lines the spec can read. */
function capturingLogger(): { logger: winston.Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const stream = new PassThrough();
  stream.on('data', (chunk: Buffer) => out.push(...chunk.toString('utf8').split('\n').filter((l) => l !== '')));
  const logger = winston.createLogger({ format: winston.format.json(), transports: [new winston.transports.Stream({ stream })] });
  return { logger, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

function basic(user: string, secret: string): string {
  return `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`;
}

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('auth: passwords', () => {
  it('hashes with scrypt in PHC form, the parameters and a random salt stored with the hash', async () => {
    const a = await hashPassword('correct horse', CHEAP);
    const b = await hashPassword('correct horse', CHEAP);
    expect(a).to.match(/^\$scrypt\$ln=10,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
    expect(a).to.not.equal(b);
    expect(a).to.not.include('correct horse');
  });

  it('verifies the right password and refuses a wrong one or a malformed hash', async () => {
    const hash = await hashPassword('correct horse', CHEAP);
    expect(await verifyPassword('correct horse', hash)).to.equal(true);
    expect(await verifyPassword('correct horsf', hash)).to.equal(false);
    expect(await verifyPassword('correct horse', hash.replace('ln=10', 'ln=11'))).to.equal(false);
    expect(await verifyPassword('correct horse', 'plain')).to.equal(false);
  });

  it('refuses stored parameters that would cost too little or too much memory', () => {
    const salt = 'A'.repeat(22);
    const key = 'B'.repeat(43);
    expect(parsePasswordHash(`$scrypt$ln=9,r=8,p=1$${salt}$${key}`)).to.be.a('string');
    expect(parsePasswordHash(`$scrypt$ln=22,r=8,p=1$${salt}$${key}`)).to.match(/more than/);
    expect(parsePasswordHash(`$scrypt$ln=15,r=8,p=1$${salt}$${key}`)).to.be.an('object');
  });
});

describe('auth: tokens and credentials', () => {
  it('makes recognisable random tokens and stores only their SHA-256', () => {
    const a = newToken();
    const b = newToken();
    expect(a.token).to.match(TOKEN_PATTERN);
    expect(a.token.startsWith('qg_')).to.equal(true);
    expect(a.token).to.not.equal(b.token);
    expect(a.sha256).to.equal(tokenHash(a.token)).and.match(/^[0-9a-f]{64}$/);
  });

  it('reads Basic and Bearer credentials and says why others are malformed', () => {
    expect(parseAuthorization(undefined)).to.equal(undefined);
    expect(parseAuthorization(basic('alice', 'pa:ss'))).to.deep.equal({ scheme: 'basic', user: 'alice', secret: 'pa:ss' });
    expect(parseAuthorization('Bearer qg_x')).to.deep.equal({ scheme: 'bearer', token: 'qg_x' });
    expect(parseAuthorization('bearer   qg_x ')).to.deep.equal({ scheme: 'bearer', token: 'qg_x' });
    for (const bad of ['Digest x', 'Basic !!!', `Basic ${Buffer.from('nocolon').toString('base64')}`, 'Bearer', `Bearer ${'a'.repeat(5000)}`]) {
      expect(parseAuthorization(bad), bad.slice(0, 20)).to.be.a('string');
    }
    expect(parseAuthorization(['Bearer a', 'Bearer b'])).to.be.a('string');
  });
});

describe('auth: the users file', () => {
  const hash = '$scrypt$ln=10,r=8,p=1$' + 'A'.repeat(22) + '$' + 'B'.repeat(43);
  const token = { name: 't', sha256: 'a'.repeat(64), scopes: ['read'], created: '2025-01-01T00:00:00Z', expires: null };
  const good = (): any => structuredClone({ version: 1, users: { alice: { admin: false, password: hash, tokens: [token] }, bob: { admin: true, password: null, tokens: [] } } });

  it('accepts a good file and writes it back the same', () => {
    const parsed = parseUsersFile(JSON.stringify(good()));
    expect(parseUsersFile(serializeUsersFile(parsed))).to.deep.equal(parsed);
    expect(parsed.users.bob!.admin).to.equal(true);
  });

  const bad: [string, (f: any) => unknown, RegExp][] = [
    ['a wrong version', (f) => (f.version = 2), /version/],
    ['an unknown field', (f) => (f.users.alice.role = 'x'), /unknown field/],
    ['a missing field', (f) => delete f.users.alice.tokens, /missing field/],
    ['a user name that is not an owner name', (f) => (f.users['-x'] = f.users.bob), /user name/],
    ['a reserved user name', (f) => (f.users.repos = f.users.bob), /reserved/],
    ['two names equal but for case', (f) => (f.users.Alice = f.users.bob), /case/],
    ['a password that is not a scrypt hash', (f) => (f.users.alice.password = 'hunter22'), /scrypt/],
    ['scrypt parameters that cost gigabytes', (f) => (f.users.alice.password = hash.replace('ln=10', 'ln=21')), /more than/],
    ['an unknown scope', (f) => (f.users.alice.tokens[0].scopes = ['root']), /scopes/],
    ['no scope', (f) => (f.users.alice.tokens[0].scopes = []), /scopes/],
    ['a token hash that is not hex', (f) => (f.users.alice.tokens[0].sha256 = 'z'.repeat(64)), /sha256/],
    ['one token hash twice', (f) => f.users.bob.tokens.push({ ...token, name: 'u' }), /twice/],
    ['two tokens of one name', (f) => f.users.alice.tokens.push({ ...token, sha256: 'b'.repeat(64) }), /two tokens/],
    ['a bad expiry', (f) => (f.users.alice.tokens[0].expires = 'soon'), /expires/],
  ];
  for (const [what, change, message] of bad) {
    it(`refuses ${what}`, () => {
      const f = good();
      change(f);
      expect(() => parseUsersFile(JSON.stringify(f))).to.throw(message);
    });
  }

  it('refuses text that is not JSON without quoting it (it may hold a hash)', () => {
    expect(() => parseUsersFile(`{"version": 1, "users": {"alice": ${hash}}}`)).to.throw(/^not valid JSON$/);
  });
});

describe('auth: the user directory', () => {
  let dir: string;
  let file: string;
  let clock: ManualClock;
  let log: ReturnType<typeof capturingLogger>;
  let fixture: UsersFile;
  const alicePassword = 'correct horse';
  let aliceToken: string;
  let readToken: string;
  let expiringToken: string;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-auth-'));
    file = path.join(dir, 'users.json');
    const [t1, t2, t3] = [newToken(), newToken(), newToken()];
    [aliceToken, readToken, expiringToken] = [t1.token, t2.token, t3.token];
    fixture = {
      version: 1,
      users: {
        alice: {
          admin: false,
          password: await hashPassword(alicePassword, CHEAP),
          tokens: [
            { name: 'laptop', sha256: t1.sha256, scopes: ['read', 'write'], created: '2025-01-01T00:00:00Z', expires: null },
            { name: 'ci', sha256: t2.sha256, scopes: ['read'], created: '2025-01-01T00:00:00Z', expires: null },
            { name: 'day', sha256: t3.sha256, scopes: ['admin'], created: '2025-01-01T00:00:00Z', expires: '2025-01-02T00:00:00Z' },
          ],
        },
        root: { admin: true, password: null, tokens: [] },
      },
    };
  });
  beforeEach(async () => {
    clock = new ManualClock();
    log = capturingLogger();
    await writeUsersFile(file, fixture);
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  const open = (): Promise<UserDirectory> => UserDirectory.open({ file, clock, logger: log.logger, reloadIntervalMs: 1000 });

  it('refuses to start without the file, or with a bad one, saying what to do', async () => {
    const missing = await errorOf(UserDirectory.open({ file: path.join(dir, 'none.json'), clock, logger: log.logger, reloadIntervalMs: 1000 }));
    expect((missing as Error).message).to.match(/does not exist; create it with `quorum-git user add/);
    await fs.writeFile(file, '{');
    expect(((await errorOf(open())) as Error).message).to.match(/not valid JSON/);
  });

  it('takes no credentials as anonymous, a right password as its user, a wrong one or an unknown user as a failure', async () => {
    const users = await open();
    expect(await users.authenticate(undefined)).to.deep.equal({ ok: true, principal: undefined });
    const principal: Principal = { user: 'alice', admin: false, scope: 'admin', via: 'password' };
    expect(await users.authenticate(basic('alice', alicePassword))).to.deep.equal({ ok: true, principal });
    // The second time comes from the cache of recent successes: the same answer.
    expect(await users.authenticate(basic('alice', alicePassword))).to.deep.equal({ ok: true, principal });
    expect(await users.authenticate(basic('alice', 'correct horsf'))).to.deep.include({ ok: false, reason: 'wrong password' });
    expect(await users.authenticate(basic('mallory', alicePassword))).to.deep.include({ ok: false, reason: 'unknown user' });
    expect(await users.authenticate(basic('root', 'anything at all'))).to.deep.include({ ok: false, reason: 'user has no password' });
    expect(await users.authenticate(basic('alice', ''))).to.deep.include({ ok: false, reason: 'empty password' });
    expect(await users.authenticate('Digest x')).to.deep.include({ ok: false });
  });

  it('takes a token as Bearer or as the Basic password of its own user, capped by its scopes', async () => {
    const users = await open();
    const laptop = { ok: true, principal: { user: 'alice', admin: false, scope: 'write', via: 'token', token: 'laptop' } };
    expect(await users.authenticate(`Bearer ${aliceToken}`)).to.deep.equal(laptop);
    expect(await users.authenticate(basic('alice', aliceToken))).to.deep.equal(laptop);
    expect(await users.authenticate(basic('root', aliceToken))).to.deep.include({ ok: false, reason: 'token of another user' });
    expect(await users.authenticate(`Bearer ${readToken}`)).to.deep.nested.include({ 'principal.scope': 'read' });
    expect(await users.authenticate(`Bearer ${newToken().token}`)).to.deep.include({ ok: false, reason: 'unknown token' });
    expect(await users.authenticate('Bearer qg_short')).to.deep.include({ ok: false });
  });

  it('refuses a token once it has expired', async () => {
    const users = await open();
    expect(await users.authenticate(`Bearer ${expiringToken}`)).to.deep.nested.include({ ok: true, 'principal.scope': 'admin' });
    clock.advance(24 * 3600_000);
    expect(await users.authenticate(`Bearer ${expiringToken}`)).to.deep.include({ ok: false, reason: 'token day expired' });
  });

  it('follows the file: a change is in force after the next poll, a revoked token stops working', async () => {
    const users = await open();
    expect(await users.reloadIfChanged()).to.equal(false);
    const bob = newToken();
    const changed: UsersFile = structuredClone(fixture);
    changed.users.bob = { admin: false, password: null, tokens: [{ name: 'x', sha256: bob.sha256, scopes: ['read'], created: '2025-01-01T00:00:00Z', expires: null }] };
    changed.users.alice!.tokens = changed.users.alice!.tokens.filter((t) => t.name !== 'laptop');
    await writeUsersFile(file, changed);
    users.start();
    const reloaded = new Promise<void>((resolve) => log.logger.on('data', (info: { message: string }) => info.message === 'users file reloaded' && resolve()));
    clock.advance(1000);
    await reloaded;
    expect(await users.authenticate(`Bearer ${bob.token}`)).to.deep.nested.include({ ok: true, 'principal.user': 'bob' });
    expect(await users.authenticate(`Bearer ${aliceToken}`)).to.deep.include({ ok: false, reason: 'unknown token' });
    users.stop();
    expect(clock.timers).to.have.length(0);
  });

  it('keeps the last good file when the file turns bad or goes away, and logs an error once per change', async () => {
    const users = await open();
    await fs.writeFile(file, '{"version": 1, "users": {"alice": ');
    expect(await users.reloadIfChanged()).to.equal(false);
    expect(await users.reloadIfChanged()).to.equal(false);
    expect(await users.authenticate(`Bearer ${aliceToken}`)).to.deep.nested.include({ ok: true, 'principal.user': 'alice' });
    await fs.rm(file);
    expect(await users.reloadIfChanged()).to.equal(false);
    expect(await users.authenticate(`Bearer ${aliceToken}`)).to.deep.nested.include({ ok: true, 'principal.user': 'alice' });
    const errors = log.lines().filter((l) => l.level === 'error');
    expect(errors.map((l) => l.message)).to.deep.equal(['users file is invalid; keeping the last good one', 'users file cannot be read; keeping the last good one']);
    // The file's content (hashes) never reaches the log.
    expect(JSON.stringify(log.lines())).to.not.include('scrypt');
    await writeUsersFile(file, fixture);
    expect(await users.reloadIfChanged()).to.equal(true);
  });

  it(`runs at most ${PASSWORD_CHECKS_AT_ONCE} password checks at once and refuses beyond a bounded queue`, async () => {
    const users = await open();
    const attempts = Array.from({ length: 70 }, (_, i) => users.authenticate(basic('alice', `wrong password ${i}`)).then((o) => o, (err: unknown) => err));
    const results = await Promise.all(attempts);
    const busy = results.filter((r) => r instanceof QuorumGitError && r.code === 'auth_busy');
    expect(busy).to.have.length(70 - PASSWORD_CHECKS_AT_ONCE - 64);
    expect(results.filter((r) => !(r instanceof QuorumGitError)).every((r) => (r as { ok: boolean }).ok === false)).to.equal(true);
  });
});

describe('authz: decisions', () => {
  const alice = (scope: Principal['scope'] = 'admin', via: Principal['via'] = 'password'): Principal => ({ user: 'alice', admin: false, scope, via });
  const root: Principal = { user: 'root', admin: true, scope: 'admin', via: 'password' };
  const shared: RepoAccess = { visibility: 'private', collaborators: { alice: 'write' } };
  const open: RepoAccess = { visibility: 'public', collaborators: {} };
  const cases: [string, Principal | undefined, string, 'read' | 'write' | 'admin', RepoAccess, true | 401 | 403 | 404][] = [
    ['the owner reads, pushes and deletes', alice(), 'alice/r', 'admin', PRIVATE_REPO_ACCESS, true],
    ['anonymous is asked who it is for a private repo', undefined, 'alice/r', 'read', PRIVATE_REPO_ACCESS, 401],
    ['anonymous is asked who it is to push', undefined, 'alice/r', 'write', open, 401],
    ['anonymous clones a public repo', undefined, 'alice/r', 'read', open, true],
    ['another user does not see a private repo', alice(), 'bob/r', 'read', PRIVATE_REPO_ACCESS, 404],
    ['another user may not push to a public repo', alice(), 'bob/r', 'write', open, 403],
    ['a collaborator with write pushes', alice(), 'bob/r', 'write', shared, true],
    ['a collaborator with write may not delete', alice(), 'bob/r', 'admin', shared, 403],
    ['an admin does anything anywhere', root, 'bob/r', 'admin', PRIVATE_REPO_ACCESS, true],
    ['a read token may not push to its own repo', alice('read', 'token'), 'alice/r', 'write', PRIVATE_REPO_ACCESS, 403],
    ['a write token pushes but may not delete', alice('write', 'token'), 'alice/r', 'write', PRIVATE_REPO_ACCESS, true],
    ['a write token may not delete', alice('write', 'token'), 'alice/r', 'admin', PRIVATE_REPO_ACCESS, 403],
    ['a token does not reveal what its user may not see', alice('admin', 'token'), 'bob/r', 'read', PRIVATE_REPO_ACCESS, 404],
  ];
  for (const [what, principal, repoId, need, access, expected] of cases) {
    it(what, () => {
      const decision = decideRepo(principal, repoId, need, access);
      expect(decision.allow ? true : decision.status).to.equal(expected);
    });
  }

  it('knows what each route needs: every git request a level on its repo, the push POST too', () => {
    expect(requirement(route('GET', '/health'))).to.deep.equal({ kind: 'open' });
    expect(requirement(route('POST', '/internal/txn/prepare'))).to.deep.equal({ kind: 'peer' });
    expect(requirement(route('GET', '/repos'))).to.deep.equal({ kind: 'any' });
    expect(requirement(route('POST', '/repos'))).to.deep.equal({ kind: 'user' });
    expect(requirement(route('GET', '/a/r.git/info/refs?service=git-upload-pack'))).to.deep.equal({ kind: 'repo', repoId: 'a/r', level: 'read' });
    expect(requirement(route('POST', '/a/r.git/git-upload-pack'))).to.deep.equal({ kind: 'repo', repoId: 'a/r', level: 'read' });
    expect(requirement(route('GET', '/a/r/info/refs?service=git-receive-pack'))).to.deep.equal({ kind: 'repo', repoId: 'a/r', level: 'write' });
    expect(requirement(route('POST', '/a/r.git/git-receive-pack'))).to.deep.equal({ kind: 'repo', repoId: 'a/r', level: 'write' });
    expect(requirement(route('DELETE', '/repos/a/r'))).to.deep.equal({ kind: 'repo', repoId: 'a/r', level: 'admin' });
    expect(requirement(route('PATCH', '/repos/a/r'))).to.deep.equal({ kind: 'repo', repoId: 'a/r', level: 'admin' });
  });

  it('lets a user create under their own name only, an admin anywhere, a token only with the scope for it', () => {
    const status = (p: Principal | undefined, id: string): true | number => {
      const d = decideCreate(p, id);
      return d.allow ? true : d.status;
    };
    expect(status(alice(), 'alice/new')).to.equal(true);
    expect(status(alice(), 'bob/new')).to.equal(403);
    expect(status(undefined, 'alice/new')).to.equal(401);
    expect(status(root, 'bob/new')).to.equal(true);
    expect(status(alice('read', 'token'), 'alice/new')).to.equal(403);
    expect(status(alice('write', 'token'), 'alice/new')).to.equal(true);
    expect(status({ ...root, scope: 'write', via: 'token' }, 'bob/new')).to.equal(403);
  });
});

describe('auth CLI', () => {
  let dir: string;
  let file: string;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-auth-cli-'));
    file = path.join(dir, 'users.json');
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  function io(stdin = ''): CliIo & { out: () => string; err: () => string } {
    let out = '';
    let err = '';
    const stdout = new PassThrough().on('data', (c: Buffer) => (out += c.toString()));
    const stderr = new PassThrough().on('data', (c: Buffer) => (err += c.toString()));
    return { stdin: Readable.from([stdin]), stdout, stderr, env: { AUTH_FILE: file }, now: () => Date.parse('2025-01-01T00:00:00Z'), scrypt: CHEAP, out: () => out, err: () => err };
  }

  it('adds a user with the password from stdin, refuses a second of that name, lists it', async () => {
    expect(await userCommand(['add', 'alice', '--admin'], io('correct horse\n'))).to.equal(0);
    const stored = JSON.parse(await fs.readFile(file, 'utf8')) as UsersFile;
    expect(stored.users.alice!.admin).to.equal(true);
    expect(await verifyPassword('correct horse', stored.users.alice!.password!)).to.equal(true);
    expect((await fs.stat(file)).mode & 0o777).to.equal(0o600);
    const again = io('another password\n');
    expect(await userCommand(['add', 'ALICE'], again)).to.equal(1);
    expect(again.err()).to.match(/exists/);
    const list = io();
    expect(await userCommand(['list'], list)).to.equal(0);
    expect(list.out()).to.equal('alice (admin)  tokens: 0\n');
    expect(await fs.readdir(dir)).to.deep.equal(['users.json']);
  });

  it('refuses a short password and bad usage without touching the file', async () => {
    expect(await userCommand(['add', 'alice'], io('short\n'))).to.equal(1);
    expect(await userCommand(['add'], io())).to.equal(2);
    expect(await userCommand(['add', 'alice', '--bogus'], io())).to.equal(2);
    expect(await fs.readdir(dir)).to.deep.equal([]);
  });

  it('creates a token printed once, lists it without the token, revokes it; removes a user with its tokens', async () => {
    expect(await userCommand(['add', 'alice'], io('correct horse\n'))).to.equal(0);
    const created = io();
    expect(await tokenCommand(['create', 'alice', '--name', 'ci', '--scopes', 'read', '--expires-in-days', '7'], created)).to.equal(0);
    const token = created.out().trim();
    expect(token).to.match(TOKEN_PATTERN);
    const text = await fs.readFile(file, 'utf8');
    expect(text).to.not.include(token);
    expect(text).to.include(tokenHash(token));
    const listed = io();
    expect(await tokenCommand(['list', '--json'], listed)).to.equal(0);
    expect(JSON.parse(listed.out())).to.deep.equal([{ user: 'alice', name: 'ci', scopes: ['read'], created: '2025-01-01T00:00:00.000Z', expires: '2025-01-08T00:00:00.000Z', expired: false }]);
    expect(listed.out()).to.not.include(token);
    expect(await tokenCommand(['create', 'alice', '--name', 'ci'], io())).to.equal(1);
    expect(await tokenCommand(['create', 'bob', '--name', 'x'], io())).to.equal(1);
    expect(await tokenCommand(['create', 'alice', '--name', 'x', '--scopes', 'root'], io())).to.equal(2);
    expect(await tokenCommand(['revoke', 'alice', 'ci'], io())).to.equal(0);
    expect(await tokenCommand(['revoke', 'alice', 'ci'], io())).to.equal(1);
    expect(parseUsersFile(await fs.readFile(file, 'utf8')).users.alice!.tokens).to.deep.equal([]);
    expect(await userCommand(['remove', 'alice'], io())).to.equal(0);
    expect(parseUsersFile(await fs.readFile(file, 'utf8')).users).to.deep.equal({});
  });

  it('changes a password', async () => {
    expect(await userCommand(['add', 'alice'], io('correct horse\n'))).to.equal(0);
    expect(await userCommand(['passwd', 'alice'], io('battery staple\n'))).to.equal(0);
    expect(await userCommand(['passwd', 'bob'], io('battery staple\n'))).to.equal(1);
    const stored = parseUsersFile(await fs.readFile(file, 'utf8'));
    expect(await verifyPassword('battery staple', stored.users.alice!.password!)).to.equal(true);
  });
});
