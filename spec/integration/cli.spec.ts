import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { portsInUse } from '../../lib/cli/local-cluster.js';
import { LONG_2PC_ENV, Cluster, GitClient, eventually, freePorts, http, printLogsOnFailure, type TestNode } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, expectConverged, expectPushed } from '../support/push-helpers.js';
import { CLI, type CliResult, runCli } from '../support/run-cli.js';

// The `quorum-git` command line. Without a cluster: --help of the program and of every command, and
// usage errors (exit 2). Against one real 3-node cluster shared by the file: `verify` exits 0 only when
// every replica agrees and names the unreachable and divergent ones; `status` reports every node's
// reachability, recovery, repos and in-doubt transactions; `repo create|list|show|delete` over the
// management API, as tables and --json, with their exit statuses. And `cluster` (what `npm start`
// runs): a 2-node local cluster that comes up, answers, and stops on SIGINT with exit 0.
//
// Node 1 never syncs by itself after its start (SYNC_INTERVAL_MS of an hour), so a divergence made
// by hand on its disk stays (the other nodes repair only themselves, and they are the majority).
// The repo commands run last: verify and status count the repos the setup made.

const NEVER_MS = '3600000';

const COMMANDS: { args: string[]; mentions: RegExp[] }[] = [
  { args: ['serve'], mentions: [/PEER_URLS/, /CLUSTER_SECRET/, /Exit status/] },
  { args: ['cluster'], mentions: [/--nodes <n>/, /--base-port <port>/, /--data-dir <dir>/, /Exit status/] },
  { args: ['repo'], mentions: [/create \[options\] <repo>/, /list/, /show \[options\] <repo>/, /delete \[options\] <repo>/] },
  { args: ['repo', 'create'], mentions: [/--node <url>/, /--json/, /--timeout-ms <ms>/, /Exit status/] },
  { args: ['repo', 'list'], mentions: [/--node <url>/, /--json/] },
  { args: ['repo', 'show'], mentions: [/--node <url>/, /--json/] },
  { args: ['repo', 'delete'], mentions: [/--node <url>/, /--json/] },
  { args: ['status'], mentions: [/--node <url>/, /--json/, /CLUSTER_SECRET/, /Exit status/] },
  { args: ['verify'], mentions: [/--node <url>/, /--json/, /CLUSTER_SECRET/, /Exit status/] },
];

describe('quorum-git command line: help and usage errors', function () {
  it('lists every command with --help, and exits 0', async function () {
    const res = await runCli(['--help']);
    expect(res.code, res.stderr).to.equal(0);
    expect(res.stdout).to.match(/^Usage: quorum-git \[options\] \[command\]/);
    for (const name of ['serve', 'cluster', 'repo', 'status', 'verify']) expect(res.stdout).to.match(new RegExp(`^  ${name} `, 'm'));
  });

  it('prints the help of every command with --help on stdout, and exits 0', async function () {
    const results = await Promise.all(COMMANDS.map((c) => runCli([...c.args, '--help'])));
    COMMANDS.forEach((c, i) => {
      const res = results[i]!;
      const name = c.args.join(' ');
      expect(res.code, `${name}: ${res.stderr}`).to.equal(0);
      expect(res.stdout, name).to.match(new RegExp(`^Usage: quorum-git ${name} `));
      for (const mention of c.mentions) expect(res.stdout, name).to.match(mention);
      expect(res.stderr, name).to.equal('');
    });
  });

  it('exits 2 with the help on stderr for no command and for an unknown one', async function () {
    const [none, unknown] = await Promise.all([runCli([]), runCli(['frobnicate'])]);
    expect(none.code).to.equal(2);
    expect(none.stderr).to.match(/Usage: quorum-git/);
    expect(unknown.code).to.equal(2);
    expect(unknown.stderr).to.match(/unknown command 'frobnicate'/);
    expect(none.stdout + unknown.stdout).to.equal('');
  });

  const usage: { title: string; args: string[]; message: RegExp }[] = [
    { title: 'verify without --node', args: ['verify'], message: /required option '--node <url>' not specified/ },
    { title: 'verify with an unknown flag', args: ['verify', '--node', 'http://127.0.0.1:1', '--frobnicate'], message: /unknown option '--frobnicate'/ },
    { title: 'verify with a URL that does not parse', args: ['verify', '--node', 'not a url'], message: /is not a URL/ },
    { title: 'verify with --node without a value', args: ['verify', '--node'], message: /option '--node <url>' argument missing/ },
    { title: 'status with a bad --timeout-ms', args: ['status', '--node', 'http://127.0.0.1:1', '--timeout-ms', '0'], message: /--timeout-ms must be a whole number/ },
    { title: 'repo create without a repo', args: ['repo', 'create', '--node', 'http://127.0.0.1:1'], message: /missing required argument 'repo'/ },
    { title: 'repo show of a path, not a repo id', args: ['repo', 'show', '../etc', '--node', 'http://127.0.0.1:1'], message: /owner may contain only/ },
    { title: 'cluster with too many nodes', args: ['cluster', '--nodes', '10'], message: /--nodes must be a whole number from 1 to 9/ },
  ];
  it('exits 2 with the message and the command\'s usage on stderr, printing nothing on stdout, for every usage error', async function () {
    const results = await Promise.all(usage.map((row) => runCli(row.args)));
    usage.forEach((row, i) => {
      const res = results[i]!;
      expect(res.code, `${row.title}: ${res.stderr}`).to.equal(2);
      expect(res.stderr, row.title).to.match(row.message);
      expect(res.stderr, row.title).to.match(/Usage: quorum-git /);
      expect(res.stdout, row.title).to.equal('');
    });
  });
});

describe('quorum-git command line against a 3-node cluster', function () {
  let cluster: Cluster;
  let git: GitClient;
  let first = '';
  let second = '';

  const cli = (args: string[]): Promise<CliResult> => runCli(args, { CLUSTER_SECRET: cluster.secret });

  before(async function () {
    // No spec here waits for a protocol timer (a stopped node refuses connections at once), so the
    // 2PC timeouts are generous: a loaded machine must not fail the setup's creates and pushes.
    [cluster, git] = await Promise.all([Cluster.create(3, { start: false, env: { ...LONG_2PC_ENV } }), GitClient.create()]);
    cluster.node(1).env.SYNC_INTERVAL_MS = NEVER_MS;
    await cluster.heal();
    const n2 = cluster.node(2);
    await createRepo(cluster, n2, 'ops/shared');
    await createRepo(cluster, n2, 'ops/empty');
    const dir = await cloneLocal(git, n2, 'ops/shared', 'verify');
    first = await commitFile(git, dir, 'a.txt', 'one\n');
    expectPushed(await git.run(['push', 'origin', 'HEAD:main'], { cwd: dir }));
    second = await commitFile(git, dir, 'a.txt', 'two\n');
    expectPushed(await git.run(['push', 'origin', 'HEAD:main'], { cwd: dir }));
    await expectConverged(cluster, git, 'ops/shared');
  });

  afterEach(async function () {
    printLogsOnFailure(this, cluster);
    await cluster.heal();
  });

  after(async function () {
    await Promise.all([cluster?.destroy(), git?.dispose()]);
  });

  describe('verify', function () {
    it('exits 0 when every replica of every repo agrees on all nodes', async function () {
      const res = await cli(['verify', '--node', cluster.node(1).url]);
      expect(res.code, res.stdout + res.stderr).to.equal(0);
      expect(res.stdout).to.match(/nodes: 3 \(3 reachable\), repos: 2, replicas checked: 6/);
      expect(res.stdout).to.match(/every replica agrees/);
    });

    it('reports every replica in --json, each with its version', async function () {
      const res = await cli(['verify', '--node', cluster.node(3).url, '--json']);
      expect(res.code, res.stderr).to.equal(0);
      const report = JSON.parse(res.stdout);
      expect(report).to.include({ ok: true, repos: 2 });
      expect(report.problems).to.deep.equal([]);
      expect(report.nodes.map((n: { url: string }) => n.url).sort()).to.deep.equal(cluster.nodes.map((n) => n.url).sort());
      const shared = report.replicas.filter((r: { repo_id: string }) => r.repo_id === 'ops/shared');
      expect(shared).to.have.length(3);
      for (const r of shared) expect(r).to.include({ status: 'ok', generation: 2 });
    });

    it('exits 1 when the node given does not answer', async function () {
      const [closed] = await freePorts(1);
      const res = await cli(['verify', '--node', `http://127.0.0.1:${closed}`]);
      expect(res.code).to.equal(1);
      expect(res.stderr).to.match(/cannot reach/);
    });

    it('exits 1 and names a replica whose refs were changed on disk divergent, with the ref that differs', async function () {
      const n1 = cluster.node(1);
      // Same version as its peers, other refs: what a lost write or a bad repair would leave.
      await git.ok(['update-ref', 'refs/heads/main', first, second], { cwd: n1.repoDir('ops/shared') });
      try {
        const res = await cli(['verify', '--node', cluster.node(2).url, '--json']);
        expect(res.code, res.stdout + res.stderr).to.equal(1);
        const report = JSON.parse(res.stdout);
        expect(report.problems).to.have.length(1);
        expect(report.problems[0]).to.include({ repo_id: 'ops/shared', node: n1.url, status: 'divergent', generation: 2 });
        expect(report.problems[0].detail).to.equal(`refs/heads/main ${first.slice(0, 12)} (majority ${second.slice(0, 12)})`);
        const text = await cli(['verify', '--node', cluster.node(2).url]);
        expect(text.code).to.equal(1);
        expect(text.stdout).to.match(new RegExp(`ops/shared\\s+${n1.url.replace(/[.]/g, '\\.')}\\s+divergent\\s+\\d+\\.2\\s+refs/heads/main`));
      } finally {
        await git.ok(['update-ref', 'refs/heads/main', second, first], { cwd: n1.repoDir('ops/shared') });
      }
      const after = await cli(['verify', '--node', n1.url]);
      expect(after.code, after.stdout).to.equal(0);
    });
  });

  describe('status', function () {
    it('exits 0 and reports every node reachable and recovered, with its repos and no transaction in doubt', async function () {
      const report = await eventually(async () => {
        const res = await cli(['status', '--node', cluster.node(2).url, '--json']);
        expect(res.code, res.stderr).to.equal(0);
        const parsed = JSON.parse(res.stdout);
        for (const n of parsed.nodes) expect(n.recovered, n.url).to.equal(true);
        return parsed;
      });
      expect(report.ok).to.equal(true);
      const byUrl = new Map(report.nodes.map((n: { url: string }) => [n.url, n]));
      for (const node of cluster.nodes) {
        expect(byUrl.get(node.url)).to.deep.equal({ url: node.url, reachable: true, server_id: node.serverId, recovered: true, repos: 2, in_doubt: 0, dead: [] });
      }
      const text = await cli(['status', '--node', cluster.node(2).url]);
      expect(text.code).to.equal(0);
      expect(text.stdout).to.match(/every node is reachable/);
    });
  });

  describe('verify and status with a node stopped', function () {
    it('both exit 1 and name the stopped node unreachable', async function () {
      const n3 = cluster.node(3) as TestNode;
      await n3.stop();
      const [verify, status] = await Promise.all([cli(['verify', '--node', cluster.node(1).url]), cli(['status', '--node', cluster.node(2).url])]);
      expect(verify.code, verify.stdout + verify.stderr).to.equal(1);
      const row = verify.stdout.split('\n').find((l) => l.includes(n3.url));
      expect(row, verify.stdout).to.match(/^\*\s+\S+\s+unreachable/);
      expect(status.code, status.stdout + status.stderr).to.equal(1);
      expect(status.stdout.split('\n').find((l) => l.startsWith(n3.url)), status.stdout).to.match(/UNREACHABLE/);
      expect(status.stdout).to.match(/1 of 3 node\(s\) unreachable/);
    });
  });

  describe('repo create, list, show and delete', function () {
    const urlPattern = (url: string): string => url.replace(/[.]/g, '\\.');

    it('creates a repo (exit 0: where it was applied and how to clone it), and refuses to create it again (exit 1, repo_exists)', async function () {
      const created = await cli(['repo', 'create', 'cli/alpha', '--node', cluster.node(1).url]);
      expect(created.code, created.stderr).to.equal(0);
      expect(created.stdout).to.match(
        new RegExp(`^created cli/alpha: applied on [23] node\\(s\\) \\(quorum 2\\), epoch \\d+\nclone: git clone ${urlPattern(cluster.node(1).url)}/cli/alpha\\.git\n$`),
      );
      const again = await cli(['repo', 'create', 'cli/alpha', '--node', cluster.node(2).url, '--json']);
      expect(again.code).to.equal(1);
      expect(JSON.parse(again.stdout).error.code).to.equal('repo_exists');
      expect(again.stderr).to.match(/already exists \(repo_exists, HTTP 409\)/);
      const json = await cli(['repo', 'create', 'cli/beta', '--node', cluster.node(3).url, '--json']);
      expect(json.code, json.stderr).to.equal(0);
      expect(JSON.parse(json.stdout)).to.include({ repo_id: 'cli/beta', created: true, replicated: true, quorum: 2, clone_url: `${cluster.node(3).url}/cli/beta.git` });
    });

    it('lists and shows repos from any node, as a table and as JSON', async function () {
      const [listJson, listText, showJson, showText] = await Promise.all([
        cli(['repo', 'list', '--node', cluster.node(3).url, '--json']),
        cli(['repo', 'list', '--node', cluster.node(1).url]),
        cli(['repo', 'show', 'cli/alpha', '--node', cluster.node(2).url, '--json']),
        cli(['repo', 'show', 'cli/alpha', '--node', cluster.node(2).url]),
      ]);
      for (const res of [listJson, listText, showJson, showText]) expect(res.code, res.stderr).to.equal(0);
      expect(JSON.parse(listJson.stdout)).to.deep.equal({ repos: ['cli/alpha', 'cli/beta', 'ops/empty', 'ops/shared'], count: 4 });
      expect(listText.stdout).to.equal('REPO\ncli/alpha\ncli/beta\nops/empty\nops/shared\n4 repositories\n');
      const shown = JSON.parse(showJson.stdout);
      expect(shown).to.include({ repo_id: 'cli/alpha', exists: true, generation: 0 });
      const [header, row] = showText.stdout.trimEnd().split('\n');
      expect(header).to.match(/^REPO\s+VERSION\s+CLONE_URL$/);
      expect(row).to.match(new RegExp(`^cli/alpha\\s+${shown.epoch}\\.0\\s+${urlPattern(cluster.node(2).url)}/cli/alpha\\.git$`));
    });

    it('exits 1 for a repo that does not exist, printing the error body with --json', async function () {
      const [show, del] = await Promise.all([
        cli(['repo', 'show', 'cli/nothing', '--node', cluster.node(1).url, '--json']),
        cli(['repo', 'delete', 'cli/nothing', '--node', cluster.node(1).url]),
      ]);
      expect(show.code).to.equal(1);
      expect(JSON.parse(show.stdout)).to.deep.include({ repo_id: 'cli/nothing', exists: false });
      expect(JSON.parse(show.stdout).error.code).to.equal('repo_not_found');
      expect(del.code).to.equal(1);
      expect(del.stdout).to.equal('');
      expect(del.stderr).to.match(/^quorum-git repo delete: repository cli\/nothing does not exist \(repo_not_found, HTTP 404\)/);
    });

    it('deletes a repo (exit 0), after which no node shows it', async function () {
      const [text, json] = await Promise.all([
        cli(['repo', 'delete', 'cli/alpha', '--node', cluster.node(3).url]),
        cli(['repo', 'delete', 'cli/beta', '--node', cluster.node(2).url, '--json']),
      ]);
      expect(text.code, text.stderr).to.equal(0);
      expect(text.stdout).to.equal('deleted cli/alpha\n');
      expect(json.code, json.stderr).to.equal(0);
      expect(JSON.parse(json.stdout)).to.deep.equal({ repo_id: 'cli/beta', deleted: true });
      const shows = await Promise.all(cluster.nodes.map((n) => cli(['repo', 'show', 'cli/alpha', '--node', n.url])));
      for (const show of shows) expect(show.code, show.stdout).to.equal(1);
    });

    it('exits 3 when the node given does not answer (nothing was sent, nothing changed)', async function () {
      const [closed] = await freePorts(1);
      const node = `http://127.0.0.1:${closed}`;
      const [create, list] = await Promise.all([cli(['repo', 'create', 'cli/gamma', '--node', node, '--json']), cli(['repo', 'list', '--node', node])]);
      expect(create.code).to.equal(3);
      expect(JSON.parse(create.stdout).error.code).to.equal('unreachable');
      expect(create.stderr).to.match(/cannot reach/);
      expect(list.code).to.equal(3);
      expect((await http(`${cluster.node(1).url}/repos/cli/gamma`)).status).to.equal(404);
    });
  });
});

/** A base port whose next `count - 1` ports are free too. */
async function freeRun(count: number): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const [base] = await freePorts(1);
    if (base! + count - 1 <= 65_535 && (await portsInUse(Array.from({ length: count }, (_, i) => base! + i))).length === 0) return base!;
  }
  throw new Error(`no ${count} consecutive free ports found`);
}

describe('quorum-git cluster (what npm start runs)', function () {
  let dataDir = '';
  let child: ChildProcess | undefined;

  before(async function () {
    dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'quorum-git-spec-cluster-cmd-'));
  });

  after(async function () {
    // Not stopped by its spec (a failure): SIGTERM stops its nodes too; SIGKILL if it hangs.
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child!.kill('SIGKILL'), 15_000);
      await gone;
      clearTimeout(timer);
    }
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it('runs nodes that answer and reach each other, keeps the cluster secret in the data dir, and stops them all on SIGINT with exit 0', async function () {
    const base = await freeRun(2);
    const env: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: 'warn' };
    delete env.CLUSTER_SECRET;
    delete env.CLUSTER_SIZE;
    const proc = spawn(process.execPath, [CLI, 'cluster', '--nodes', '2', '--base-port', String(base), '--data-dir', dataDir], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    proc.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    await eventually(() => {
      expect(proc.exitCode, `exited early: ${stderr}`).to.equal(null);
      expect(stdout).to.include('Ctrl-C stops all nodes.');
    }, 30_000);
    const urls = [`http://127.0.0.1:${base}`, `http://127.0.0.1:${base + 1}`];
    expect(stdout).to.include(`node-1  ${urls[0]}`);
    expect(stdout).to.include(`node-2  ${urls[1]}`);
    for (const [i, url] of urls.entries()) {
      const health = await http(`${url}/health`);
      expect(health.status).to.equal(200);
      expect(health.body).to.include({ server_id: `node-${i + 1}`, peers_reachable: 1 });
    }
    const secretFile = path.join(await fs.realpath(dataDir), 'cluster-secret');
    expect((await fs.stat(secretFile)).mode & 0o777).to.equal(0o600);
    const secret = (await fs.readFile(secretFile, 'utf8')).trim();
    expect(secret).to.match(/^[0-9a-f]{32}$/);
    const status = await runCli(['status', '--node', urls[0]!], { CLUSTER_SECRET: secret });
    expect(status.code, status.stdout + status.stderr).to.equal(0);

    proc.kill('SIGINT');
    expect(await exited).to.equal(0);
    expect(await portsInUse([base, base + 1])).to.deep.equal([]);
  });

  it('exits 1 and starts nothing when a port is taken', async function () {
    const [taken] = await freePorts(1);
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(taken, '127.0.0.1', () => resolve()));
    try {
      const res = await runCli(['cluster', '--nodes', '1', '--base-port', String(taken), '--data-dir', dataDir]);
      expect(res.code).to.equal(1);
      expect(res.stderr).to.match(new RegExp(`port\\(s\\) ${taken} on 127\\.0\\.0\\.1 already in use`));
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });
});
