import { promises as fs } from 'node:fs';
import path from 'node:path';
import { REQUEST_ID_HEADER, SECRET_HEADER } from '../base/headers.js';
import { PROC_RECEIVE_UPGRADE } from './proc-receive.js';

// The git side of replication: a pre-receive hook shared by every repo of a node (core.hooksPath),
// and the git configuration every git process the node starts inherits through the environment.

export const HOOK_TIMEOUT_S = 3600;

/**
 * receive-pack runs with the push's request id in this variable (lib/http/git-http.ts), and the hook sends
 * it back, so the push's transaction carries the id the client's request had (lib/http/request-id.ts).
 */
export const REQUEST_ID_ENV = 'QUORUM_REQUEST_ID';

/**
 * What every git of a node fsyncs (core.fsync): objects, packs with their indexes, and refs. git's
 * default leaves refs out; `npm run bench` also measures http-backend with this (scripts/bench-push.ts).
 */
export const GIT_FSYNC = 'committed,pack-metadata,reference';

/**
 * GIT_FSYNC without refs (`committed` is objects and refs): for a git whose ref lock files the node
 * makes durable itself, all at once, before they are renamed into place (lib/git/ref-txn.ts).
 */
export const GIT_FSYNC_WITHOUT_REFS = 'objects,pack-metadata';

/** Where the hooks post; the node's router sends them to the push service. */
export const HOOK_PATH = '/internal/hooks/pre-receive';
export const PROC_RECEIVE_PATH = '/internal/hooks/proc-receive';

/**
 * Writes DATA_DIR/hooks/pre-receive and DATA_DIR/hooks/proc-receive.
 *
 * pre-receive posts the ref updates, the quarantine path and its parent's pid (receive-pack) to the
 * node and exits with the node's verdict; what the node says is printed on stderr, which git relays
 * to the client as `remote:` lines. The node commits the push on a quorum before it answers.
 *
 * proc-receive runs, for a receive-pack started with handRefsToNode (a push of many refs), once the
 * pushed objects are in the repo: receive-pack hands it every ref update instead of moving the refs
 * itself. The hook upgrades
 * a connection to the node (PROC_RECEIVE_UPGRADE) and relays bytes both ways with cat; the node
 * speaks the protocol (lib/git/proc-receive.ts), commits the ref transaction it prepared with its
 * vote (refs locked, lock files durable), all refs at once, and answers "ok <ref>" for each.
 * receive-pack would otherwise move and fsync each ref in a transaction of its own after the hook:
 * 0.3 s of a 501-ref push.
 *
 * The cluster secret sits in a 0600 file read by a shell builtin, never on a command line. The hooks
 * are bash speaking HTTP over bash's /dev/tcp, with builtins only (but proc-receive's two cats): they
 * run on every push, and starting curl alone took 6 ms on the bench machine against 2 ms for the
 * whole bash hook. Only the node's own listener is ever asked, so the protocol needed is tiny: one
 * request, and a response that ends when the node closes the connection (an HTTP/1.0 client gets no
 * chunking) or an upgrade.
 */
export async function installHooks(dataDir: string, host: string, port: number, secret: string): Promise<string> {
  const dir = path.join(dataDir, 'hooks');
  await fs.mkdir(dir, { recursive: true });
  const authFile = path.join(dir, 'auth-header');
  await fs.writeFile(authFile, `${SECRET_HEADER}: ${secret}\n`, { mode: 0o600 });
  await fs.chmod(authFile, 0o600);
  const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  // The hooks' shared lines: their setup, reading the node's status line and headers, and printing
  // the node's answer for git to relay as `remote:` lines.
  const prelude = `LC_ALL=C
fail() { echo "quorum-git: $1" >&2; exit 1; }`;
  const readAnswerHead = `IFS=' ' read -r -t ${HOOK_TIMEOUT_S} _ status _ <&3 || fail 'the local node stopped answering; fetch to see whether the push landed, then push again'
while IFS= read -r -t ${HOOK_TIMEOUT_S} line <&3 && [ "\${line%$'\\r'}" != '' ]; do :; done`;
  const answerToStderr = `while IFS= read -r -t ${HOOK_TIMEOUT_S} line <&3 || [ -n "$line" ]; do printf '%s\\n' "$line" >&2; done`;
  const preReceive = `#!/bin/bash
# quorum-git pre-receive hook, written by the node at start; edits are overwritten.
# Hands this push to the local node, which commits it on a quorum of nodes before any ref moves.
${prelude}
IFS= read -r -d '' updates
IFS= read -r auth < ${quote(authFile)} || fail 'the hook cannot read its credentials; nothing was changed'
{ exec 3<>/dev/tcp/${host}/${port}; } 2>/dev/null || fail 'the local node did not answer; nothing was changed'
printf 'POST ${HOOK_PATH} HTTP/1.0\\r\\nhost: ${host}\\r\\n%s\\r\\n${REQUEST_ID_HEADER}: %s\\r\\nx-git-dir: %s\\r\\nx-quarantine: %s\\r\\nx-receive-pack-pid: %s\\r\\ncontent-type: text/plain\\r\\ncontent-length: %d\\r\\n\\r\\n%s' \\
  "$auth" "\${${REQUEST_ID_ENV}:-}" "$PWD" "\${GIT_QUARANTINE_PATH:-}" "$PPID" "\${#updates}" "$updates" >&3 2>/dev/null || fail 'the local node did not answer; nothing was changed'
# Once the push was handed over, a silent node may have committed it on other nodes before it stopped.
${readAnswerHead}
${answerToStderr}
[ "$status" = 200 ]
`;
  const procReceive = `#!/bin/bash
# quorum-git proc-receive hook, written by the node at start; edits are overwritten.
# Once the pushed objects are in place, lets the local node move the refs: the node speaks the
# proc-receive protocol with receive-pack itself (lib/git/proc-receive.ts), this hook relays bytes.
${prelude}
IFS= read -r auth < ${quote(authFile)} || fail 'the hook cannot read its credentials; the push may be committed on other nodes: fetch to see whether it landed'
{ exec 3<>/dev/tcp/${host}/${port}; } 2>/dev/null || fail 'the local node did not answer; the push may be committed on other nodes: fetch to see whether it landed'
printf 'GET ${PROC_RECEIVE_PATH} HTTP/1.1\\r\\nhost: ${host}\\r\\n%s\\r\\n${REQUEST_ID_HEADER}: %s\\r\\nx-receive-pack-pid: %s\\r\\nconnection: Upgrade\\r\\nupgrade: ${PROC_RECEIVE_UPGRADE}\\r\\n\\r\\n' \\
  "$auth" "\${${REQUEST_ID_ENV}:-}" "$PPID" >&3 2>/dev/null || fail 'the local node did not answer; the push may be committed on other nodes: fetch to see whether it landed'
${readAnswerHead}
if [ "$status" != 101 ]; then
  ${answerToStderr}
  exit 1
fi
cat <&3 &
cat >&3
wait $!
`;
  for (const [name, script] of [['pre-receive', preReceive], ['proc-receive', procReceive]] as const) {
    const hook = path.join(dir, name);
    const tmp = `${hook}.tmp`;
    await fs.writeFile(tmp, script, { mode: 0o755 });
    await fs.rename(tmp, hook);
  }
  return dir;
}

/**
 * Git configuration for every git process this node starts (they inherit process.env):
 * our hooks; always keep pushed objects as a pack (receive.unpackLimit=1), so there is exactly one
 * indexed pack to ship; hide refs that repair set aside; no gc inside a push; and durable refs.
 */
export function applyGitEnvironment(env: NodeJS.ProcessEnv, hooksDir: string, limits: { maxInputSizeBytes?: number } = {}): void {
  const settings: [string, string][] = [
    ['core.hooksPath', hooksDir],
    ['receive.unpackLimit', '1'],
    ['transfer.hideRefs', 'refs/lost+found'],
    // catch-up's private fetch namespace (lib/cluster/catch-up.ts), there only while a catch-up runs.
    ['transfer.hideRefs', 'refs/quorum-fetch'],
    // gc runs in the background on every replica instead (lib/git/maintenance.ts).
    ['receive.autogc', 'false'],
    // A push acknowledged on W nodes must survive those machines losing power, not only a process
    // crash: git's default hardens packs only, so pack indexes and refs are fsynced too (each
    // node's txn log says "committed" only after git moved the refs).
    ['core.fsync', GIT_FSYNC],
    // Partial clones (`git clone --filter=blob:none`, `tree:0`): without allowFilter upload-pack
    // does not advertise `filter`, and the client says "filtering not recognized by server" and
    // takes every object. A partial clone later fetches the objects it lacks by id: protocol v2
    // serves any object by id anyway (upload-pack.c parse_want), a v0 client asks only if the
    // server advertises allow-reachable-sha1-in-want ("Server does not allow request for
    // unadvertised object" otherwise). Reachable rather than Any: v0 then serves nothing that
    // no ref (hidden ones included) leads to, such as the objects of a refused push.
    ['uploadpack.allowFilter', 'true'],
    ['uploadpack.allowReachableSHA1InWant', 'true'],
  ];
  // An oversized push is refused by receive-pack (index-pack) while it arrives, with git's own
  // message naming the limit, instead of being taken into quarantine in full and then refused by
  // the peers (MAX_PACK_BYTES).
  if (limits.maxInputSizeBytes !== undefined) settings.push(['receive.maxInputSize', String(limits.maxInputSizeBytes)]);
  addGitConfig(env, settings);
  // The protocol version is the client's (its Git-Protocol header, lib/http/git-http.ts), never one this
  // node happened to be started with.
  delete env.GIT_PROTOCOL;
}

/**
 * Makes the receive-pack started with `env` hand every pushed ref to the node through the
 * proc-receive hook (installHooks), to be moved in the ref transaction the node prepared with its
 * vote, instead of moving them itself one ref at a time. For a push of BULK_REF_UPDATES refs or
 * more (lib/http/git-http.ts): below that, receive-pack's own per-ref moves cost less than the
 * hook's round trip through the node.
 */
export function handRefsToNode(env: NodeJS.ProcessEnv): void {
  addGitConfig(env, [['receive.procReceiveRefs', 'refs/']]);
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
