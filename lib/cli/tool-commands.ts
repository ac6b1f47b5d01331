import { type Command, Option } from 'commander';
import type { PeerClient } from '../cluster/peer-client.js';
import { DEV_CLUSTER_SECRET } from '../base/config.js';
import { EXIT, integerParser, parseNodeUrl, Progress, toJson, type Act, type Outcome } from './output.js';

// `quorum-git verify` and `status`, the operator tools (README "Operator tools"): they ask one node
// for the cluster's nodes, then every node, over the internal API with the cluster secret from
// CLUSTER_SECRET. Exit 0 all well, 1 a finding (or the node given does not answer), 2 a usage error.

/** Per-request timeout of the operator tools, unless --timeout-ms says otherwise. */
const TOOL_TIMEOUT_MS = 10_000;

interface ToolOptions {
  node: string;
  json?: boolean;
  timeoutMs: number;
}

const TOOL_HELP = `
Authenticates with the cluster secret in CLUSTER_SECRET (the one the nodes were started with).
Exit status: 0 all well; 1 a finding, or the node given does not answer; 2 usage error.`;

function toolCommand(program: Command, name: string, description: string): Command {
  return program
    .command(name)
    .description(description)
    .addOption(new Option('--node <url>', 'any node of the cluster, e.g. http://127.0.0.1:3001').env('QUORUM_GIT_NODE').argParser(parseNodeUrl).makeOptionMandatory())
    .option('--json', 'print the full report as JSON, for scripts')
    .addOption(new Option('--timeout-ms <ms>', 'bounds each request to a node').argParser(integerParser('--timeout-ms', 1, 3_600_000)).default(TOOL_TIMEOUT_MS))
    .addHelpText('after', TOOL_HELP);
}

/**
 * Runs one operator tool with a peer client authenticated by CLUSTER_SECRET: prints its report (a
 * table, or JSON with --json) and exits 0 when the report is all well, 1 otherwise or when the node
 * given did not answer (then nothing can be said about the cluster).
 */
async function withToolClient<R extends { ok: boolean }>(
  label: string,
  options: ToolOptions,
  run: (client: PeerClient) => Promise<R>,
  format: (report: R) => string,
  onFailure: () => void = () => undefined,
): Promise<Outcome> {
  // Loaded here: `--help` and the other commands start without the peer client.
  const { PeerClient } = await import('../cluster/peer-client.js');
  const secret = process.env.CLUSTER_SECRET;
  if (!secret) process.stderr.write('quorum-git: CLUSTER_SECRET is not set: using the development default\n');
  const client = new PeerClient({ secret: secret || DEV_CLUSTER_SECRET, requestTimeoutMs: options.timeoutMs });
  try {
    const report = await run(client);
    process.stdout.write(options.json ? toJson(report) : `${format(report)}\n`);
    return report.ok ? EXIT.ok : EXIT.failed;
  } catch (err) {
    onFailure();
    process.stderr.write(`quorum-git ${label}: ${(err as Error).message}\n`);
    return EXIT.failed;
  } finally {
    client.close();
  }
}

async function runTool(name: 'verify' | 'status', options: ToolOptions): Promise<Outcome> {
  if (name === 'status') {
    const { formatStatus, runStatus } = await import('./status.js');
    return withToolClient(name, options, (client) => runStatus(client, options.node, { timeoutMs: options.timeoutMs }), formatStatus);
  }
  const { formatVerify, runVerify } = await import('./verify.js');
  const progress = new Progress(process.stderr, name);
  return withToolClient(
    name,
    options,
    async (client) => {
      const report = await runVerify(client, options.node, { timeoutMs: options.timeoutMs, onProgress: (done, total) => progress.update(done, total, 'repos') });
      progress.end();
      return report;
    },
    formatVerify,
    () => progress.end(),
  );
}

async function runNodeCommand(target: string, dead: boolean, options: ToolOptions): Promise<Outcome> {
  const { formatMembership, runMembership } = await import('./dead-nodes.js');
  return withToolClient('node', options, (client) => runMembership(client, options.node, target, dead, { timeoutMs: options.timeoutMs }), formatMembership);
}

const NODE_HELP = `
A node declared dead for good is fenced (its peers answer none of its messages) and whatever it held
is void: the live nodes settle the transactions that waited on its answer. Declare only a node that is
stopped for good, at most N - W of them. It comes back only on an empty data dir, with \`node readmit\`.`;

/** `verify`, `status`, and `node declare-dead|readmit`. */
export function registerToolCommands(program: Command, act: Act): void {
  toolCommand(program, 'status', "every node's reachability, recovery, repos and transactions in doubt").action(
    act(async (options: ToolOptions) => runTool('status', options)),
  );
  toolCommand(program, 'verify', "compares every repo's HEAD, refs and version on every node; names each replica that does not agree")
    .addHelpText('after', 'A progress line is drawn on stderr when it is a terminal.')
    .action(act(async (options: ToolOptions) => runTool('verify', options)));
  const node = program.command('node').description('declare a node lost for good dead, or readmit it on an empty data dir').addHelpText('after', NODE_HELP);
  toolCommand(node, 'declare-dead', 'tell every other node that <url> is dead for good (it must not answer)')
    .argument('<url>', "the dead node's URL as the cluster names it (see `quorum-git status`)", parseNodeUrl)
    .action(act(async (url: string, options: ToolOptions) => runNodeCommand(url, true, options)));
  toolCommand(node, 'readmit', 'let <url> back in once it runs on an empty data dir')
    .argument('<url>', "the node's URL as the cluster names it", parseNodeUrl)
    .action(act(async (url: string, options: ToolOptions) => runNodeCommand(url, false, options)));
}
