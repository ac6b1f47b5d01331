import path from 'node:path';
import { parseArgs } from 'node:util';
import { systemClock } from '../base/clock.js';
import {
  PASSWORD_MAX_BYTES,
  TOKEN_NAME,
  hashPassword,
  newToken,
  parseScopes,
  passwordProblem,
  readUsersFile,
  tokenExpired,
  updateUsersFile,
  type ScryptParams,
  type UsersFile,
} from '../http/auth.js';
import { userNameProblem } from '../core/repo-id.js';

// `quorum-git user add|passwd|remove|list` and `quorum-git token create|list|revoke`: they edit the
// users file (AUTH_FILE, or --file) in place, atomically and under a lock (lib/http/auth.ts). Nodes reading
// it pick a change up within AUTH_RELOAD_INTERVAL_MS; every node needs the same file, so copy it to
// the other machines after a change. Exit codes: 0 done, 1 refused (no such user, a name taken, a bad
// file), 2 a usage error.

/** What a command reads and writes; the real process's by default (cliIo). */
export interface CliIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
  now: () => number;
  /** scrypt cost of new password hashes (default DEFAULT_SCRYPT); specs pass a cheap one. */
  scrypt?: ScryptParams;
}

export function cliIo(): CliIo {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env, now: () => systemClock.now() };
}

export const USER_USAGE = [
  'usage: quorum-git user add <name> [--admin]     (the password: typed twice, or the first line of stdin)',
  '       quorum-git user passwd <name>',
  '       quorum-git user remove <name>               (its tokens go with it)',
  '       quorum-git user list [--json]',
  '       every command takes --file PATH (default: $AUTH_FILE)',
].join('\n');

export const TOKEN_USAGE = [
  'usage: quorum-git token create <user> --name NAME [--scopes read,write] [--expires-in-days N]',
  '                printed once; scopes are read, write, admin (each includes the ones before it)',
  '       quorum-git token list [<user>] [--json]',
  '       quorum-git token revoke <user> <name>',
  '       every command takes --file PATH (default: $AUTH_FILE)',
].join('\n');

const MAX_EXPIRY_DAYS = 3650;

class UsageError extends Error {}
class Refused extends Error {}

function usersFile(file: string | undefined, io: CliIo): string {
  const chosen = file ?? io.env.AUTH_FILE;
  if (!chosen) throw new UsageError('no users file: set AUTH_FILE or pass --file PATH');
  return path.resolve(chosen);
}

function parse(args: string[], options: Record<string, { type: 'string' | 'boolean' }>): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options: { ...options, file: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | undefined>, positionals };
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function checkUser(file: UsersFile, name: string): void {
  if (!Object.hasOwn(file.users, name)) throw new Refused(`no user named '${name}'`);
}

/** Runs one command body: usage errors are exit 2, refusals and bad files exit 1. */
async function run(usage: string, io: CliIo, body: () => Promise<void>): Promise<number> {
  try {
    await body();
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`quorum-git: ${err.message}\n${usage}\n`);
      return 2;
    }
    io.stderr.write(`quorum-git: ${(err as Error).message}\n`);
    return 1;
  }
}

/** `quorum-git user <subcommand> ...`. */
export function userCommand(args: string[], io: CliIo = cliIo()): Promise<number> {
  return run(USER_USAGE, io, async () => {
    const [sub, ...rest] = args;
    const { values, positionals } = parse(rest, { admin: { type: 'boolean' }, json: { type: 'boolean' } });
    if (sub === undefined || sub === '--help' || sub === '-h' || values.help) {
      io.stdout.write(`${USER_USAGE}\n`);
      return;
    }
    const expect = (n: number): string[] => {
      if (positionals.length !== n) throw new UsageError(`user ${sub} takes ${n === 0 ? 'no' : n} argument${n === 1 ? '' : 's'}`);
      return positionals;
    };
    const allowed: Record<string, string[]> = { add: ['admin', 'file'], passwd: ['file'], remove: ['file'], list: ['json', 'file'] };
    if (!(sub in allowed)) throw new UsageError(`unknown command 'user ${sub}'`);
    const extra = Object.keys(values).filter((k) => k !== 'help' && !allowed[sub]!.includes(k));
    if (extra.length > 0) throw new UsageError(`user ${sub} does not take --${extra[0]}`);
    const file = usersFile(values.file as string | undefined, io);
    switch (sub) {
      case 'add': {
        const [name] = expect(1) as [string];
        const problem = userNameProblem(name);
        if (problem) throw new Refused(problem);
        // Checked before the password is asked for: nobody types a password twice to hear the name is taken.
        const before = await readOrEmpty(file);
        if (Object.keys(before.users).some((u) => u.toLowerCase() === name.toLowerCase())) throw new Refused(`a user named '${name}' exists`);
        const hash = await hashPassword(await readNewPassword(io), io.scrypt);
        await updateUsersFile(file, (users) => {
          if (Object.keys(users.users).some((u) => u.toLowerCase() === name.toLowerCase())) throw new Refused(`a user named '${name}' exists`);
          users.users[name] = { admin: values.admin === true, password: hash, tokens: [] };
        });
        io.stderr.write(`added user ${name}${values.admin ? ' (admin)' : ''} to ${file}\n`);
        return;
      }
      case 'passwd': {
        const [name] = expect(1) as [string];
        checkUser(await readOrEmpty(file), name);
        const hash = await hashPassword(await readNewPassword(io), io.scrypt);
        await updateUsersFile(file, (users) => {
          checkUser(users, name);
          users.users[name]!.password = hash;
        });
        io.stderr.write(`changed the password of ${name}\n`);
        return;
      }
      case 'remove': {
        const [name] = expect(1) as [string];
        await updateUsersFile(file, (users) => {
          checkUser(users, name);
          delete users.users[name];
        });
        io.stderr.write(`removed user ${name} and its tokens\n`);
        return;
      }
      case 'list': {
        expect(0);
        const users = await readUsersFile(file);
        const rows = Object.entries(users.users)
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([name, u]) => ({ name, admin: u.admin, password: u.password !== null, tokens: u.tokens.length }));
        if (values.json) io.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        else for (const r of rows) io.stdout.write(`${r.name}${r.admin ? ' (admin)' : ''}  tokens: ${r.tokens}${r.password ? '' : '  (no password)'}\n`);
        return;
      }
    }
  });
}

/** `quorum-git token <subcommand> ...`. */
export function tokenCommand(args: string[], io: CliIo = cliIo()): Promise<number> {
  return run(TOKEN_USAGE, io, async () => {
    const [sub, ...rest] = args;
    const { values, positionals } = parse(rest, { name: { type: 'string' }, scopes: { type: 'string' }, 'expires-in-days': { type: 'string' }, json: { type: 'boolean' } });
    if (sub === undefined || sub === '--help' || sub === '-h' || values.help) {
      io.stdout.write(`${TOKEN_USAGE}\n`);
      return;
    }
    const allowed: Record<string, string[]> = { create: ['name', 'scopes', 'expires-in-days', 'file'], list: ['json', 'file'], revoke: ['file'] };
    if (!(sub in allowed)) throw new UsageError(`unknown command 'token ${sub}'`);
    const extra = Object.keys(values).filter((k) => k !== 'help' && !allowed[sub]!.includes(k));
    if (extra.length > 0) throw new UsageError(`token ${sub} does not take --${extra[0]}`);
    const file = usersFile(values.file as string | undefined, io);
    switch (sub) {
      case 'create': {
        if (positionals.length !== 1) throw new UsageError('token create takes one argument: the user');
        const user = positionals[0]!;
        const name = values.name as string | undefined;
        if (name === undefined) throw new UsageError('token create needs --name NAME (to list and revoke it by)');
        if (!TOKEN_NAME.test(name)) throw new UsageError('--name must be 1-64 characters of [A-Za-z0-9._-]');
        let scopes;
        try {
          scopes = parseScopes((values.scopes as string | undefined) ?? 'read,write');
        } catch (err) {
          throw new UsageError((err as Error).message);
        }
        const now = io.now();
        let expires: string | null = null;
        const days = values['expires-in-days'] as string | undefined;
        if (days !== undefined) {
          if (!/^\d+$/.test(days) || Number(days) < 1 || Number(days) > MAX_EXPIRY_DAYS) throw new UsageError(`--expires-in-days must be an integer 1-${MAX_EXPIRY_DAYS}`);
          expires = new Date(now + Number(days) * 86_400_000).toISOString();
        }
        const { token, sha256 } = newToken();
        await updateUsersFile(file, (users) => {
          checkUser(users, user);
          const record = users.users[user]!;
          if (record.tokens.some((t) => t.name === name)) throw new Refused(`${user} already has a token named '${name}'; revoke it first or pick another name`);
          record.tokens.push({ name, sha256, scopes, created: new Date(now).toISOString(), expires });
        });
        // The token alone on stdout (TOKEN=$(quorum-git token create ...)); it is not stored and never shown again.
        io.stdout.write(`${token}\n`);
        io.stderr.write(`token '${name}' of ${user}, scopes ${scopes.join(',')}${expires ? `, expires ${expires}` : ', no expiry'}: shown once, store it now\n`);
        return;
      }
      case 'list': {
        if (positionals.length > 1) throw new UsageError('token list takes at most one argument: the user');
        const users = await readUsersFile(file);
        const only = positionals[0];
        if (only !== undefined) checkUser(users, only);
        const now = io.now();
        const rows = Object.entries(users.users)
          .filter(([name]) => only === undefined || name === only)
          .sort(([a], [b]) => a.localeCompare(b))
          .flatMap(([user, u]) => u.tokens.map((t) => ({ user, name: t.name, scopes: t.scopes, created: t.created, expires: t.expires, expired: tokenExpired(t, now) })));
        if (values.json) io.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        else for (const r of rows) io.stdout.write(`${r.user}  ${r.name}  ${r.scopes.join(',')}  created ${r.created}  ${r.expires === null ? 'no expiry' : `${r.expired ? 'expired' : 'expires'} ${r.expires}`}\n`);
        return;
      }
      case 'revoke': {
        if (positionals.length !== 2) throw new UsageError('token revoke takes two arguments: the user and the token name');
        const [user, name] = positionals as [string, string];
        await updateUsersFile(file, (users) => {
          checkUser(users, user);
          const record = users.users[user]!;
          if (!record.tokens.some((t) => t.name === name)) throw new Refused(`${user} has no token named '${name}'`);
          record.tokens = record.tokens.filter((t) => t.name !== name);
        });
        io.stderr.write(`revoked token '${name}' of ${user}\n`);
        return;
      }
    }
  });
}

async function readOrEmpty(file: string): Promise<UsersFile> {
  try {
    return await readUsersFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, users: {} };
    throw new Error(`${file}: ${(err as Error).message}`);
  }
}

/** A new password: typed twice without echo on a terminal, else the first line of stdin. */
async function readNewPassword(io: CliIo): Promise<string> {
  let password: string;
  if (io.stdin.isTTY && io.stdin.setRawMode) {
    password = await promptHidden(io, 'Password: ');
    const again = await promptHidden(io, 'Again: ');
    if (again !== password) throw new Refused('the passwords do not match; nothing was changed');
  } else {
    password = await firstLine(io.stdin);
  }
  const problem = passwordProblem(password);
  if (problem) throw new Refused(`${problem}; nothing was changed`);
  return password;
}

/** The first line of a stream (without its line end), reading at most a little more than a password may be. */
async function firstLine(stream: NodeJS.ReadableStream): Promise<string> {
  const limit = PASSWORD_MAX_BYTES + 2;
  let text = '';
  for await (const chunk of stream) {
    text += typeof chunk === 'string' ? chunk : (chunk as Buffer).toString('utf8');
    if (text.includes('\n') || Buffer.byteLength(text) > limit) break;
  }
  const end = text.indexOf('\n');
  return (end === -1 ? text : text.slice(0, end)).replace(/\r$/, '');
}

/** Reads one line from a terminal in raw mode, echoing nothing. Ctrl-C or Ctrl-D before any input abandons. */
function promptHidden(io: CliIo, prompt: string): Promise<string> {
  const stdin = io.stdin;
  // Echo off before the prompt shows: whatever is typed once it shows must not appear.
  stdin.setRawMode!(true);
  io.stderr.write(prompt);
  return new Promise((resolve, reject) => {
    let value = '';
    const done = (err?: Error): void => {
      stdin.removeListener('data', onData);
      stdin.setRawMode!(false);
      stdin.pause();
      io.stderr.write('\n');
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (chunk: Buffer | string): void => {
      for (const ch of typeof chunk === 'string' ? chunk : chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003' || (ch === '\u0004' && value === '')) return done(new Refused('abandoned; nothing was changed'));
        if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
        else if (Buffer.byteLength(value) <= PASSWORD_MAX_BYTES) value += ch;
      }
    };
    stdin.resume();
    stdin.on('data', onData);
  });
}
