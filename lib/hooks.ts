import { promises as fs } from 'node:fs';
import path from 'node:path';
import { SECRET_HEADER } from './peer-client.js';

// The git side of replication: a pre-receive hook shared by every repo of a node (core.hooksPath),
// and the git configuration every git process the node starts inherits through the environment.

export const HOOK_TIMEOUT_S = 3600;

/**
 * Writes DATA_DIR/hooks/pre-receive. It posts the ref updates, the quarantine path and its parent's
 * pid (receive-pack) to the node and exits with the node's verdict; what the node says is printed on
 * stderr, which git relays to the client as `remote:` lines. The cluster secret sits in a 0600 file
 * read by curl, never on a command line.
 */
export async function installHooks(dataDir: string, hookUrl: string, secret: string): Promise<string> {
  const dir = path.join(dataDir, 'hooks');
  await fs.mkdir(dir, { recursive: true });
  const authFile = path.join(dir, 'auth-header');
  await fs.writeFile(authFile, `${SECRET_HEADER}: ${secret}\n`, { mode: 0o600 });
  await fs.chmod(authFile, 0o600);
  const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  // One process besides sh: curl writes the node's message to stderr and the status code to stdout.
  const script = `#!/bin/sh
# quorum-git pre-receive hook, written by the node at start; edits are overwritten.
# Hands this push to the local node, which commits it on a quorum of nodes before any ref moves.
code=$(curl -sS --max-time ${HOOK_TIMEOUT_S} -X POST -H @${quote(authFile)} \\
  -H "x-git-dir: $PWD" -H "x-quarantine: \${GIT_QUARANTINE_PATH:-}" -H "x-receive-pack-pid: $PPID" \\
  -H 'content-type: text/plain' --data-binary @- -o /dev/stderr -w '%{http_code}' ${quote(hookUrl)}) || {
  echo 'quorum-git: the local node did not answer; nothing was changed' >&2
  exit 1
}
[ "$code" = 200 ]
`;
  const hook = path.join(dir, 'pre-receive');
  const tmp = `${hook}.tmp`;
  await fs.writeFile(tmp, script, { mode: 0o755 });
  await fs.rename(tmp, hook);
  return dir;
}

/**
 * Git configuration for every git process this node starts (they inherit process.env):
 * our hooks; always keep pushed objects as a pack (receive.unpackLimit=1), so there is exactly one
 * indexed pack to ship; and hide refs that repair set aside.
 */
export function applyGitEnvironment(env: NodeJS.ProcessEnv, hooksDir: string): void {
  const settings: [string, string][] = [
    ['core.hooksPath', hooksDir],
    ['receive.unpackLimit', '1'],
    ['transfer.hideRefs', 'refs/lost+found'],
  ];
  addGitConfig(env, settings);
}

/** Appends `key=value` pairs to the GIT_CONFIG_COUNT/KEY/VALUE environment of git >= 2.31. */
export function addGitConfig(env: NodeJS.ProcessEnv, settings: readonly [string, string][]): void {
  let count = Number(env.GIT_CONFIG_COUNT ?? 0) || 0;
  for (const [key, value] of settings) {
    env[`GIT_CONFIG_KEY_${count}`] = key;
    env[`GIT_CONFIG_VALUE_${count}`] = value;
    count += 1;
  }
  env.GIT_CONFIG_COUNT = String(count);
}
