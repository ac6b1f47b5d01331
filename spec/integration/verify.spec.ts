import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { Cluster, GitClient, eventually, printLogsOnFailure, type TestNode } from '../support/cluster.js';
import { cloneLocal, commitFile, createRepo, expectConverged, expectPushed } from '../support/push-helpers.js';

// The operator tools against a real 3-node cluster: `quorum-git verify` exits 0 only when every
// replica agrees and names the unreachable and divergent ones; `quorum-git status` reports every
// node's reachability, recovery, repos and in-doubt transactions; both exit 2 on a usage error.
//
// Node 1 never syncs by itself after its start (SYNC_INTERVAL_MS of an hour), so a divergence made
// by hand on its disk stays (the other nodes repair only themselves, and they are the majority).

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'lib', 'cli.js');
const NEVER_MS = '3600000';
const CLI_TIMEOUT_MS = 30_000;

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], env: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), CLI_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('operator tools: quorum-git verify and status (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let first = '';
  let second = '';

  const cli = (args: string[]): Promise<CliResult> => runCli(args, { CLUSTER_SECRET: cluster.secret });

  before(async function () {
    [cluster, git] = await Promise.all([Cluster.create(3, { start: false }), GitClient.create()]);
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

    it('exits 1 and names a stopped node unreachable', async function () {
      const n3 = cluster.node(3);
      await n3.stop();
      const res = await cli(['verify', '--node', cluster.node(1).url]);
      expect(res.code, res.stdout + res.stderr).to.equal(1);
      const row = res.stdout.split('\n').find((l) => l.includes(n3.url));
      expect(row, res.stdout).to.match(/^\*\s+\S+\s+unreachable/);
    });

    it('exits 1 when the node given does not answer', async function () {
      const n3 = cluster.node(3);
      await n3.stop();
      const res = await cli(['verify', '--node', n3.url]);
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

    const usage: { title: string; args: string[]; message: RegExp }[] = [
      { title: 'no --node', args: ['verify'], message: /--node URL is required/ },
      { title: 'an unknown flag', args: ['verify', '--node', 'http://127.0.0.1:1', '--frobnicate'], message: /unknown argument '--frobnicate'/ },
      { title: 'a URL that does not parse', args: ['verify', '--node', 'not a url'], message: /is not a URL/ },
      { title: 'a URL that is not http', args: ['verify', '--node', 'ftp://127.0.0.1:1'], message: /must be an http:\/\/ URL/ },
      { title: '--node without a value', args: ['verify', '--node'], message: /--node needs a value/ },
    ];
    for (const row of usage) {
      it(`exits 2 with the usage on ${row.title}`, async function () {
        const res = await cli(row.args);
        expect(res.code).to.equal(2);
        expect(res.stderr).to.match(row.message);
        expect(res.stderr).to.match(/usage: quorum-git/);
        expect(res.stdout).to.equal('');
      });
    }
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
        expect(byUrl.get(node.url)).to.deep.equal({ url: node.url, reachable: true, server_id: node.serverId, recovered: true, repos: 2, in_doubt: 0 });
      }
      const text = await cli(['status', '--node', cluster.node(2).url]);
      expect(text.code).to.equal(0);
      expect(text.stdout).to.match(/every node is reachable/);
    });

    it('exits 1 and names a stopped node unreachable', async function () {
      const n1 = cluster.node(1) as TestNode;
      await n1.stop();
      const res = await cli(['status', '--node', cluster.node(3).url]);
      expect(res.code, res.stdout + res.stderr).to.equal(1);
      const row = res.stdout.split('\n').find((l) => l.startsWith(n1.url));
      expect(row, res.stdout).to.match(/UNREACHABLE/);
      expect(res.stdout).to.match(/1 of 3 node\(s\) unreachable/);
    });

    it('exits 2 with the usage on an unknown flag', async function () {
      const res = await cli(['status', '--node', cluster.node(1).url, '--verbose']);
      expect(res.code).to.equal(2);
      expect(res.stderr).to.match(/unknown argument '--verbose'/);
    });
  });
});
