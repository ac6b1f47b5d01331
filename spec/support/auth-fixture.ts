import { mkdtempSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { hashPassword, newToken, writeUsersFile } from '../../lib/http/auth.js';
import { LONG_2PC_ENV } from './cluster.js';

// One users file for the specs of a cluster with AUTH_FILE (auth.spec, repo-settings.spec), and the
// credentials git and fetch send with it. The file is written once per mocha run and removed after it.
// Password hashes use scrypt's lowest accepted cost (ln=10): the cost travels with each hash.

export const CHEAP_SCRYPT = { logN: 10, r: 8, p: 1 };

export const PASSWORDS = { alice: 'alice-password-1', bob: 'bob-password-22', root: 'root-password-333' };
export type SpecUser = keyof typeof PASSWORDS;

/** alice's tokens: 'laptop' may read and write, 'ci' may only read. */
export const ALICE_WRITE_TOKEN = newToken();
export const ALICE_READ_TOKEN = newToken();

const authDir = mkdtempSync(path.join(os.tmpdir(), 'qg-auth-spec-'));
export const AUTH_FILE = path.join(authDir, 'users.json');

/** The nodes' environment: the users file, and long 2PC timeouts (nodes stay up; scrypt is slow on a loaded machine). */
export const AUTH_CLUSTER_ENV: Readonly<Record<string, string>> = { ...LONG_2PC_ENV, AUTH_FILE };

let written: Promise<void> | undefined;

/**
 * Writes the users file (once): alice and bob (no admin), root (admin), alice with her two tokens.
 * Call it in a `before` hook registered ahead of withCluster's.
 */
export function writeSpecUsersFile(): Promise<void> {
  written ??= (async () => {
    const created = '2025-01-01T00:00:00Z';
    await writeUsersFile(AUTH_FILE, {
      version: 1,
      users: {
        alice: {
          admin: false,
          password: await hashPassword(PASSWORDS.alice, CHEAP_SCRYPT),
          tokens: [
            { name: 'laptop', sha256: ALICE_WRITE_TOKEN.sha256, scopes: ['read', 'write'], created, expires: null },
            { name: 'ci', sha256: ALICE_READ_TOKEN.sha256, scopes: ['read'], created, expires: null },
          ],
        },
        bob: { admin: false, password: await hashPassword(PASSWORDS.bob, CHEAP_SCRYPT), tokens: [] },
        root: { admin: true, password: await hashPassword(PASSWORDS.root, CHEAP_SCRYPT), tokens: [] },
      },
    });
  })();
  return written;
}

if (typeof after === 'function') {
  after(async function () {
    await fs.rm(authDir, { recursive: true, force: true });
  });
}

/** An HTTP Basic authorization header; the secret is the user's password unless given (a token). */
export function basic(user: SpecUser, secret: string = PASSWORDS[user]): Record<string, string> {
  return { authorization: `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}` };
}

/** `url` with credentials in it, as git takes them; the secret is the user's password unless given. */
export function withCredentials(url: string, user: SpecUser, secret: string = PASSWORDS[user]): string {
  const u = new URL(url);
  u.username = user;
  u.password = secret;
  return u.toString();
}
