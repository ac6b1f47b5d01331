import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { writeQuorum } from '../core/quorum.js';

// Node configuration from the environment. Every limit is a named number with a default; bad values
// stop the node at start with a message that says what to change.

export interface Config {
  serverId: string;
  host: string;
  port: number;
  /** How peers and clients reach this node; also its identity in the protocol. */
  selfUrl: string;
  dataDir: string;
  peerUrls: string[];
  quorum: number;
  clusterSecret: string;
  prepareTimeoutMs: number;
  /** Added to a push's prepare timeout per MiB of pack streamed to the peers. */
  prepareTimeoutPerMiBMs: number;
  /** Added to a push's prepare timeout per ref it updates. */
  prepareTimeoutPerRefMs: number;
  commitTimeoutMs: number;
  commitResends: number;
  peerTimeoutMs: number;
  syncIntervalMs: number;
  /** The least time between two divergence checks of a few repos' refs against the peers'. */
  verifyIntervalMs: number;
  heartbeatIntervalMs: number;
  maxBodyBytes: number;
  maxRefsPerPush: number;
  maxPackBytes: number;
  pushLockTimeoutMs: number;
  /** Per-peer timeout of the freshness check that precedes every read. */
  readCheckTimeoutMs: number;
  catchUpTimeoutMs: number;
  /** Quiet time after a repo's last write before its background `git gc --auto` (lib/git/maintenance.ts). */
  gcDelayMs: number;
  /** A checkpoint rewrites the transaction log once this many entries were appended since the last. */
  checkpointEveryEntries: number;
  /** Settled transactions (and decisions) a checkpoint keeps, newest first, to answer late questions. */
  retainSettledTxns: number;
  /** Opt-in: serve a possibly stale local copy when fewer than R nodes answer (labelled so). */
  allowStaleReads: boolean;
  /**
   * STREAM_PACKS_AHEAD (default on): a large push's pack goes to the peers while its client is still
   * sending it, instead of after receive-pack indexed it (lib/cluster/pack-tee.ts). Off, a push's pack
   * crosses the peers' network once per push that reaches its hook, never for one refused before.
   */
  streamPacksAhead: boolean;
  /** A git RPC whose request body sends no byte (or whose client reads none) for this long is ended. */
  gitBodyIdleTimeoutMs: number;
  /** Git RPCs (upload-pack, receive-pack POSTs) one node serves at once; 503 with Retry-After beyond. */
  maxGitProcesses: number;
  /** The same per client address (a peer's proxied request counts for the client it forwards). */
  maxGitProcessesPerClient: number;
  /** How long a git request beyond MAX_GIT_PROCESSES(_PER_CLIENT) waits for a slot before its 503; 0 refuses at once. */
  gitQueueWaitMs: number;
  /** Connections one client address may hold open at once (0: no cap); see lib/http/connection-cap.ts. */
  maxConnectionsPerClient: number;
  /**
   * TRUSTED_PROXIES: the load balancers in front of the node, whose x-forwarded-for names the client
   * (the caps and the logs then see each client's address, lib/http/git-rpc.ts clientAddress), and
   * whose connections are not capped.
   */
  trustedProxies: TrustedProxy[];
  /** AUTH_FILE (users and tokens); without it the node serves anonymously, on loopback only. */
  authFile: string | undefined;
  /** How often the users file is looked at for changes. */
  authReloadIntervalMs: number;
  /** TLS_CERT and TLS_KEY (PEM), read at start: the node serves HTTPS. */
  tls: { cert: Buffer; key: Buffer } | undefined;
  /** TLS_CA: the PEM file of the CA(s) that peers' certificates must chain to (instead of the system's). */
  tlsCaFile: string | undefined;
  tlsCa: Buffer | undefined;
}

/** An address or CIDR range of TRUSTED_PROXIES. */
export interface TrustedProxy {
  address: string;
  prefix: number;
  family: 'ipv4' | 'ipv6';
}

/**
 * TRUSTED_PROXIES: addresses (`192.0.2.7`) and CIDR ranges (`10.0.0.0/8`, `2001:db8::/32`), separated
 * by commas or spaces; anything else stops the node at start.
 */
export function parseTrustedProxies(raw: string | undefined): TrustedProxy[] {
  const proxies: TrustedProxy[] = [];
  for (const item of (raw ?? '').split(/[\s,]+/).filter(Boolean)) {
    const [address = '', bits, extra] = item.split('/');
    const family = isIP(address);
    const max = family === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
    if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
      throw new Error(`TRUSTED_PROXIES: '${item.slice(0, 100)}' is not an IP address or CIDR range (e.g. 192.0.2.7, 10.0.0.0/8, 2001:db8::/32)`);
    }
    proxies.push({ address, prefix, family: family === 4 ? 'ipv4' : 'ipv6' });
  }
  return proxies;
}

export const DEV_CLUSTER_SECRET = 'quorum-git-dev-secret';
/** A cluster secret guards every node's internal API: shorter ones are refused beyond loopback. */
export const MIN_CLUSTER_SECRET_BYTES = 32;

function int(env: NodeJS.ProcessEnv, key: string, fallback: number, min = 0): number {
  const raw = env[key];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min) throw new Error(`${key} must be an integer >= ${min}, got '${raw}'`);
  return Number(raw);
}

function flag(env: NodeJS.ProcessEnv, key: string, fallback: boolean): boolean {
  const raw = env[key];
  if (raw === undefined || raw === '') return fallback;
  if (raw === '1' || raw === 'true') return true;
  if (raw === '0' || raw === 'false') return false;
  throw new Error(`${key} must be 1, true, 0 or false, got '${raw}'`);
}

function normalizeUrl(key: string, raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`${key}: '${raw}' is not a URL (expected e.g. http://127.0.0.1:3002)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`${key}: '${raw}' must be an http:// or https:// URL`);
  // A node's URL is its identity in the protocol and in push routing, so one spelling per node:
  // 'localhost' is taken as 127.0.0.1, the default HOST.
  if (url.hostname === 'localhost') url.hostname = '127.0.0.1';
  return url.origin;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const port = int(env, 'PORT', 3001, 1);
  if (port > 65535) throw new Error(`PORT must be at most 65535, got ${port}`);
  const host = env.HOST || '127.0.0.1';
  const serverId = env.SERVER_ID || `server-${port}`;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(serverId)) throw new Error(`SERVER_ID must be 1-64 characters of [A-Za-z0-9._-], got '${serverId}'`);
  const tls = tlsFiles(env);
  const scheme = tls.tls ? 'https' : 'http';
  const selfUrl = normalizeUrl('PUBLIC_URL', env.PUBLIC_URL || `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`);
  if (tls.tls && selfUrl.startsWith('http:')) throw new Error(`PUBLIC_URL must be an https:// URL when TLS_CERT is set (the node serves only HTTPS), got '${selfUrl}'`);
  const peerUrls = (env.PEER_URLS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => normalizeUrl('PEER_URLS', s));
  if (new Set(peerUrls).size !== peerUrls.length) throw new Error('PEER_URLS lists a peer twice');
  if (peerUrls.includes(selfUrl)) throw new Error(`PEER_URLS must not include this node itself (${selfUrl})`);
  const clusterSize = peerUrls.length + 1;
  const quorum = writeQuorum(clusterSize, env.QUORUM ? int(env, 'QUORUM', 0, 1) : undefined);
  const authFile = env.AUTH_FILE ? path.resolve(env.AUTH_FILE) : undefined;
  const problems = secureDefaultProblems({ host, selfUrl, peerUrls, clusterSecret: env.CLUSTER_SECRET, authFile });
  if (problems.length > 0) throw new Error(problems.join('\n'));
  return {
    serverId,
    host,
    port,
    selfUrl,
    dataDir: path.resolve(env.DATA_DIR || path.join('data', serverId)),
    peerUrls,
    quorum,
    clusterSecret: env.CLUSTER_SECRET || DEV_CLUSTER_SECRET,
    prepareTimeoutMs: int(env, 'PREPARE_TIMEOUT_MS', 3000, 1),
    prepareTimeoutPerMiBMs: int(env, 'PREPARE_TIMEOUT_PER_MIB_MS', 250, 0),
    prepareTimeoutPerRefMs: int(env, 'PREPARE_TIMEOUT_PER_REF_MS', 2, 0),
    commitTimeoutMs: int(env, 'COMMIT_TIMEOUT_MS', 10_000, 1),
    commitResends: int(env, 'COMMIT_RESENDS', 5),
    peerTimeoutMs: int(env, 'PEER_TIMEOUT_MS', 5000, 1),
    syncIntervalMs: int(env, 'SYNC_INTERVAL_MS', 2000, 10),
    verifyIntervalMs: int(env, 'VERIFY_INTERVAL_MS', 10_000, 10),
    heartbeatIntervalMs: int(env, 'HEARTBEAT_INTERVAL_MS', 1000, 10),
    maxBodyBytes: int(env, 'MAX_BODY_BYTES', 16 * 1024, 64),
    maxRefsPerPush: int(env, 'MAX_REFS_PER_PUSH', 100_000, 1),
    maxPackBytes: int(env, 'MAX_PACK_BYTES', 16 * 1024 ** 3, 1),
    pushLockTimeoutMs: int(env, 'PUSH_LOCK_TIMEOUT_MS', 120_000, 1),
    readCheckTimeoutMs: int(env, 'READ_CHECK_TIMEOUT_MS', 3000, 1),
    catchUpTimeoutMs: int(env, 'CATCH_UP_TIMEOUT_MS', 120_000, 1),
    gcDelayMs: int(env, 'GC_DELAY_MS', 5000, 1),
    checkpointEveryEntries: int(env, 'CHECKPOINT_EVERY_ENTRIES', 10_000, 1),
    retainSettledTxns: int(env, 'RETAIN_SETTLED_TXNS', 10_000, 0),
    allowStaleReads: env.ALLOW_STALE_READS === '1' || env.ALLOW_STALE_READS === 'true',
    streamPacksAhead: flag(env, 'STREAM_PACKS_AHEAD', true),
    gitBodyIdleTimeoutMs: int(env, 'GIT_BODY_IDLE_TIMEOUT_MS', 30_000, 100),
    maxGitProcesses: int(env, 'MAX_GIT_PROCESSES', 64, 1),
    maxGitProcessesPerClient: int(env, 'MAX_GIT_PROCESSES_PER_CLIENT', 16, 1),
    gitQueueWaitMs: int(env, 'GIT_QUEUE_WAIT_MS', 10_000, 0),
    maxConnectionsPerClient: int(env, 'MAX_CONNECTIONS_PER_CLIENT', 32, 0),
    trustedProxies: parseTrustedProxies(env.TRUSTED_PROXIES),
    authFile,
    authReloadIntervalMs: int(env, 'AUTH_RELOAD_INTERVAL_MS', 1000, 10),
    ...tls,
  };
}

/** TLS_CERT + TLS_KEY (both or neither) and TLS_CA, read now so that a bad path stops the node at start. */
function tlsFiles(env: NodeJS.ProcessEnv): Pick<Config, 'tls' | 'tlsCaFile' | 'tlsCa'> {
  const read = (key: string, file: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new Error(`${key}: cannot read '${file}' (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  };
  const certFile = env.TLS_CERT || undefined;
  const keyFile = env.TLS_KEY || undefined;
  if ((certFile === undefined) !== (keyFile === undefined)) throw new Error('TLS_CERT and TLS_KEY must be set together (PEM files of the certificate and its key)');
  const tlsCaFile = env.TLS_CA ? path.resolve(env.TLS_CA) : undefined;
  return {
    tls: certFile && keyFile ? { cert: read('TLS_CERT', certFile), key: read('TLS_KEY', keyFile) } : undefined,
    tlsCaFile,
    tlsCa: tlsCaFile === undefined ? undefined : read('TLS_CA', tlsCaFile),
  };
}

/** 127.0.0.0/8, ::1 (also as an IPv4-mapped address) and `localhost`: reachable from this machine only. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice('::ffff:'.length) : h;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

/**
 * Why this configuration must not start (secure by default), as messages that say what to set; []
 * when it may. A node reachable beyond loopback (its listen address, its public URL or any peer is
 * not loopback) needs a real cluster secret: set, not the published development default, and at
 * least MIN_CLUSTER_SECRET_BYTES long, since it lets its holder do anything to any repo (README,
 * Security). And, like Redis' protected mode, a node that listens beyond loopback needs users
 * (AUTH_FILE): without them it serves anonymously, which is only acceptable on loopback.
 */
export function secureDefaultProblems(c: { host: string; selfUrl: string; peerUrls: readonly string[]; clusterSecret: string | undefined; authFile: string | undefined }): string[] {
  const exposed = [
    ...(isLoopbackHost(c.host) ? [] : [`HOST=${c.host}`]),
    ...(isLoopbackHost(new URL(c.selfUrl).hostname) ? [] : [`PUBLIC_URL ${c.selfUrl}`]),
    ...c.peerUrls.filter((u) => !isLoopbackHost(new URL(u).hostname)).map((u) => `peer ${u}`),
  ];
  if (exposed.length === 0) return [];
  const where = `this node is reachable beyond loopback (${exposed.join(', ')})`;
  const how = `set CLUSTER_SECRET to the same random value on every node, at least ${MIN_CLUSTER_SECRET_BYTES} bytes (e.g. \`openssl rand -hex 32\`)`;
  const problems: string[] = [];
  const secret = c.clusterSecret ?? '';
  if (secret === '') problems.push(`CLUSTER_SECRET is not set and ${where}: ${how}`);
  else if (secret === DEV_CLUSTER_SECRET) problems.push(`CLUSTER_SECRET is the development default published in the README and ${where}: ${how}`);
  else if (Buffer.byteLength(secret) < MIN_CLUSTER_SECRET_BYTES) problems.push(`CLUSTER_SECRET is ${Buffer.byteLength(secret)} bytes and ${where}: ${how}`);
  if (!isLoopbackHost(c.host) && c.authFile === undefined) {
    problems.push(
      `HOST=${c.host} is not loopback and AUTH_FILE is not set: without users a node serves anyone, so it listens on loopback only; set AUTH_FILE (README, Security) or HOST=127.0.0.1`,
    );
  }
  return problems;
}
