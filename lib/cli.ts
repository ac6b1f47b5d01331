#!/usr/bin/env -S node --max-semi-space-size=1
import { DEV_CLUSTER_SECRET, loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { NODE_FLAGS, missingNodeFlags } from './runtime.js';

// `quorum-git serve`: one node, configured from the environment (see README "Configuration").
// `quorum-git verify` and `status`: the operator tools (README "Operator tools"). Exit codes: 0 all
// well, 1 a finding (or the node given does not answer), 2 a usage error.

const USAGE = [
  'usage: quorum-git serve                           (configured by PORT, HOST, SERVER_ID, DATA_DIR, PEER_URLS, QUORUM, CLUSTER_SECRET)',
  '       quorum-git verify --node URL [--json] [--timeout-ms N]',
  '                compares every repo\'s HEAD, refs and version on every node; exit 0 all agree, 1 not',
  '       quorum-git status --node URL [--json] [--timeout-ms N]',
  '                every node\'s reachability, recovery, repos and in-doubt transactions; exit 0 all reachable, 1 not',
  '       (verify and status authenticate with CLUSTER_SECRET from the environment)',
  '       quorum-git user add|passwd|remove|list ...     users of the users file (AUTH_FILE); `quorum-git user --help`',
  '       quorum-git token create|list|revoke ...        their personal access tokens; `quorum-git token --help`',
].join('\n');

/** Per-request timeout of the operator tools, unless --timeout-ms says otherwise. */
const TOOL_TIMEOUT_MS = 10_000;

interface ToolArgs {
  node: string;
  json: boolean;
  timeoutMs: number;
}

class UsageError extends Error {}

/** Hand-rolled: `--node URL` or `--node=URL`, `--json`, `--timeout-ms N`; anything else is a usage error. */
function parseToolArgs(args: readonly string[]): ToolArgs | 'help' {
  let node: string | undefined;
  let json = false;
  let timeoutMs = TOOL_TIMEOUT_MS;
  for (let i = 0; i < args.length; i += 1) {
    const arg = args[i]!;
    const eq = arg.indexOf('=');
    const [flag, inline] = arg.startsWith('--') && eq !== -1 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [arg, undefined];
    const value = (): string => {
      if (inline !== undefined) return inline;
      const next = args[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`${flag} needs a value`);
      i += 1;
      return next;
    };
    if (flag === '--help' || flag === '-h') return 'help';
    else if (flag === '--json' && inline === undefined) json = true;
    else if (flag === '--node') node = value();
    else if (flag === '--timeout-ms') {
      const raw = value();
      if (!/^\d+$/.test(raw) || Number(raw) < 1) throw new UsageError(`--timeout-ms must be a positive integer, got '${raw}'`);
      timeoutMs = Number(raw);
    } else throw new UsageError(`unknown argument '${arg}'`);
  }
  if (node === undefined) throw new UsageError('--node URL is required');
  let url: URL;
  try {
    url = new URL(node);
  } catch {
    throw new UsageError(`--node: '${node}' is not a URL (expected e.g. http://127.0.0.1:3001)`);
  }
  if (url.protocol !== 'http:') throw new UsageError(`--node: '${node}' must be an http:// URL`);
  if (url.pathname !== '/' || url.search !== '' || url.hash !== '') throw new UsageError(`--node: '${node}' must be a node's base URL, without a path`);
  return { node: url.origin, json, timeoutMs };
}

async function tool(name: 'verify' | 'status', args: readonly string[]): Promise<never> {
  let parsed: ToolArgs | 'help';
  try {
    parsed = parseToolArgs(args);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`quorum-git ${name}: ${err.message}\n${USAGE}\n`);
    process.exit(2);
  }
  if (parsed === 'help') {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const [{ PeerClient }, { formatStatus, runStatus }, { formatVerify, runVerify }] = await Promise.all([
    import('./peer-client.js'),
    import('./status.js'),
    import('./verify.js'),
  ]);
  const secret = process.env.CLUSTER_SECRET;
  if (!secret) process.stderr.write('quorum-git: CLUSTER_SECRET is not set: using the development default\n');
  const client = new PeerClient({ secret: secret || DEV_CLUSTER_SECRET, requestTimeoutMs: parsed.timeoutMs });
  let code: number;
  try {
    if (name === 'verify') {
      const report = await runVerify(client, parsed.node, { timeoutMs: parsed.timeoutMs });
      process.stdout.write(`${parsed.json ? JSON.stringify(report, null, 2) : formatVerify(report)}\n`);
      code = report.ok ? 0 : 1;
    } else {
      const report = await runStatus(client, parsed.node, { timeoutMs: parsed.timeoutMs });
      process.stdout.write(`${parsed.json ? JSON.stringify(report, null, 2) : formatStatus(report)}\n`);
      code = report.ok ? 0 : 1;
    }
  } catch (err) {
    // The node given did not answer: nothing can be said about the cluster.
    process.stderr.write(`quorum-git ${name}: ${(err as Error).message}\n`);
    code = 1;
  } finally {
    client.close();
  }
  process.exit(code);
}

async function serve(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    process.stderr.write(`quorum-git: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const logger = createLogger(config.serverId);
  if (!process.env.CLUSTER_SECRET) logger.warn('CLUSTER_SECRET is not set: using the development default; set one in production');
  const missing = missingNodeFlags();
  if (missing.length > 0) logger.info(`started without ${missing.join(' ')}: every git process starts slower; run \`node ${NODE_FLAGS.join(' ')} dist/lib/cli.js serve\``);
  // Loaded here, not above: the operator tools start in a fraction of the time without the server.
  const { QuorumGitNode } = await import('./server.js');
  const node = new QuorumGitNode(config, logger);
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info('stopping', { signal });
    node.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error('stop failed', { err });
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  try {
    await node.start();
  } catch (err) {
    logger.error('cannot start', { err });
    process.exit(1);
  }
}

const command = process.argv[2];
if (command === 'serve') {
  void serve();
} else if (command === 'verify' || command === 'status') {
  void tool(command, process.argv.slice(3));
} else if (command === 'user' || command === 'token') {
  // The users file (AUTH_FILE): lib/auth-cli.ts.
  void import('./auth-cli.js').then((m) => (command === 'user' ? m.userCommand : m.tokenCommand)(process.argv.slice(3))).then((code) => process.exit(code));
} else {
  process.stderr.write(`${USAGE}\n`);
  process.exit(command === undefined || command === '--help' || command === '-h' ? 0 : 2);
}
