import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { LOOPBACK, LocalCluster, portsInUse } from './local-cluster.js';
import { EXIT, integerParser, type Act, type Outcome } from './output.js';

// `quorum-git cluster --nodes N` (what `npm start` runs): N nodes on 127.0.0.1, ports base..base+N-1,
// data in <data-dir>/node-<i>, each a `quorum-git serve` process whose log lines are shown prefixed
// with its name. It prints the nodes once every one answers and reaches its peers. Ctrl-C (or SIGTERM)
// stops them all: exit 0. A node that cannot start, or exits while the cluster runs, stops the rest:
// exit 1.
//
// The cluster secret is CLUSTER_SECRET when set, else the one in <data-dir>/cluster-secret (made on the
// first start, readable by its owner only), so `status` and `verify` can be pointed at the cluster.

const MAX_NODES = 9;
const SECRET_FILE = 'cluster-secret';

interface ClusterOptions {
  nodes: number;
  basePort: number;
  dataDir: string;
  startTimeoutMs: number;
}

/** CLUSTER_SECRET, else the secret kept in the data dir, else a new one written there. */
async function clusterSecret(root: string): Promise<{ secret: string; from: string }> {
  if (process.env.CLUSTER_SECRET) return { secret: process.env.CLUSTER_SECRET, from: 'CLUSTER_SECRET' };
  const file = path.join(root, SECRET_FILE);
  try {
    const kept = (await fs.readFile(file, 'utf8')).trim();
    if (kept !== '') return { secret: kept, from: file };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const secret = randomBytes(16).toString('hex');
  await fs.writeFile(file, `${secret}\n`, { mode: 0o600 });
  return { secret, from: file };
}

function banner(cluster: LocalCluster, secretFrom: string): string {
  const urls = cluster.urls;
  const size = urls.length;
  const first = urls[0]!;
  const secretHint = secretFrom === 'CLUSTER_SECRET' ? 'CLUSTER_SECRET=...' : `CLUSTER_SECRET=$(cat ${secretFrom})`;
  return [
    '',
    `quorum-git: ${size}-node local cluster (write quorum ${Math.floor(size / 2) + 1}), data in ${cluster.root}`,
    ...cluster.nodes.map((n) => `  ${n.serverId}  ${n.url}`),
    '',
    'Try (in another terminal, from this directory):',
    ...(process.env.AUTH_FILE
      ? [
          `  (users from AUTH_FILE=${process.env.AUTH_FILE}; TOKEN from \`npx quorum-git token create alice --name laptop\`)`,
          `  curl -s -X POST ${first}/repos -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"repo_id":"alice/hello"}'`,
          `  git clone http://alice@${urls[size > 1 ? 1 : 0]!.slice('http://'.length)}/alice/hello.git      (password: the token)`,
        ]
      : [`  npx quorum-git repo create alice/hello --node ${first}`, `  git clone ${urls[size > 1 ? 1 : 0]}/alice/hello.git`]),
    `  npx quorum-git repo list --node ${urls[size - 1]}`,
    `  ${secretHint} npx quorum-git status --node ${first}`,
    '',
    'Ctrl-C stops all nodes.',
    '',
  ].join('\n');
}

async function runCluster(options: ClusterOptions): Promise<Outcome> {
  const ports = Array.from({ length: options.nodes }, (_, i) => options.basePort + i);
  if (ports[ports.length - 1]! > 65_535) {
    process.stderr.write(`quorum-git cluster: ports ${ports[0]}-${ports[ports.length - 1]} do not fit below 65536: lower --base-port\n`);
    return EXIT.usage;
  }
  const busy = await portsInUse(ports, LOOPBACK);
  if (busy.length > 0) {
    process.stderr.write(`quorum-git cluster: port(s) ${busy.join(', ')} on ${LOOPBACK} already in use (another cluster still running?): stop it or choose --base-port\n`);
    return EXIT.failed;
  }
  const root = path.resolve(options.dataDir);
  await fs.mkdir(root, { recursive: true });
  const { secret, from } = await clusterSecret(root);
  const cluster = await LocalCluster.create({ size: options.nodes, root, ports, secret, log: 'console', startTimeoutMs: options.startTimeoutMs });

  let stopping = false;
  const stop = (code: number, why?: string): void => {
    if (stopping) return;
    stopping = true;
    if (why) process.stderr.write(`quorum-git cluster: ${why}; stopping the cluster\n`);
    // Each node gets SIGTERM and, if it does not stop in time, SIGKILL (lib/cli/local-cluster.ts).
    cluster.stop().then(
      () => process.exit(code),
      (err) => {
        process.stderr.write(`quorum-git cluster: stop failed: ${(err as Error).message}\n`);
        process.exit(EXIT.failed);
      },
    );
  };
  process.on('SIGINT', () => stop(EXIT.ok));
  process.on('SIGTERM', () => stop(EXIT.ok));

  for (const node of cluster.nodes) node.spawn();
  // A node that exits with 0 was told to stop (Ctrl-C reaches every process of the terminal's group).
  for (const node of cluster.nodes) {
    void node.waitForExit().then((info) => {
      if (stopping) return;
      if (info.code === 0) stop(EXIT.ok);
      else stop(EXIT.failed, `${node.serverId} exited (${info.signal ?? `code ${info.code}`})`);
    });
  }
  try {
    await cluster.waitReady();
  } catch (err) {
    stop(EXIT.failed, `the cluster did not come up: ${(err as Error).message.split('\n')[0]}`);
    return 'running';
  }
  if (!stopping) process.stdout.write(`${banner(cluster, from)}\n`);
  return 'running';
}

export function registerClusterCommand(program: Command, act: Act): void {
  program
    .command('cluster')
    .description('run a local cluster of N nodes on 127.0.0.1 until Ctrl-C (what `npm start` runs)')
    .addOption(new Option('--nodes <n>', 'how many nodes').env('CLUSTER_SIZE').argParser(integerParser('--nodes', 1, MAX_NODES)).default(3))
    .addOption(new Option('--base-port <port>', 'the first node listens here, the next on the following ports').env('BASE_PORT').argParser(integerParser('--base-port', 1, 65_535)).default(3001))
    .addOption(new Option('--data-dir <dir>', 'node-<i>/ of each node (repositories, transaction log) and the cluster secret').env('DATA_ROOT').default('data'))
    .addOption(new Option('--start-timeout-ms <ms>', 'how long to wait for every node to answer and reach its peers').argParser(integerParser('--start-timeout-ms', 1, 3_600_000)).default(30_000))
    .addHelpText(
      'after',
      `
Every node inherits this environment (LOG_LEVEL, QUORUM, timeouts: README "Configuration"); the
cluster sets each node's PORT, HOST, SERVER_ID, DATA_DIR, PEER_URLS and CLUSTER_SECRET.
Exit status: 0 stopped by Ctrl-C/SIGTERM; 1 a node could not start or exited; 2 usage error.`,
    )
    .action(act(async (options: ClusterOptions) => runCluster(options)));
}
