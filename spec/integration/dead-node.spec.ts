import { promises as fs } from 'node:fs';
import { expect } from 'chai';
import { type Cluster, type GitClient, type TestNode, eventually, withCluster } from '../support/cluster.js';
import { repoStateOf } from '../support/fault-checks.js';
import { cloneLocal, commitFile, createRepo, expectConverged, repoCoordinatedBy, startWith, waitForView } from '../support/push-helpers.js';
import { runCli } from '../support/run-cli.js';

// A node lost for good (README "A node lost for good"), on a real 3-node cluster: the two-fault wait
// and the operator's way out of it.
//
// Node 3 is down when node 1 (the repo's coordinator) decides a push, so the decision's acceptors are
// node 1 and node 2 (W = 2); node 1 crashes right after logging the decision (failpoint), then node 2
// dies for good. Node 1 comes back with node 3: node 1's log holds the commit, node 3 never saw it, and
// whether node 2 accepted it (which would make it final) nobody alive can tell. No safe rule decides,
// so the repo stays held, and unwritable, while node 2 may return. `quorum-git node declare-dead` says
// it will not: the live nodes decide (node 1's logged decision is a live acceptance: commit), the repo
// takes pushes again, node 2 is fenced if it comes back with its old disk, and is readmitted only on
// an empty one, after which it catches up.

describe('a node lost for good, declared dead by the operator (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;
  let repoId: string;
  let work: string;
  let env: Record<string, string>;

  withCluster(3, {}, (c, g) => {
    [cluster, git] = [c, g];
    [n1, n2, n3] = c.nodes as [TestNode, TestNode, TestNode];
    env = { CLUSTER_SECRET: c.secret };
  });

  /** Rounds in which node 1 asked about the held push (its own logged decision: `accepted`) and proved nothing. */
  const waits = (): number =>
    n1
      .logText()
      .split('\n')
      .filter((l) => l.includes('"in-doubt txn"') && l.includes('"coordinator":"accepted"') && l.includes('"verdict":"wait"')).length;

  /** Pushes a new commit on top of what `node` serves; returns git's exit code and stderr. */
  async function pushVia(node: TestNode, content: string): Promise<{ code: number | null; stderr: string }> {
    await git.ok(['fetch', '--quiet', node.gitUrl(repoId), 'main'], { cwd: work });
    await git.ok(['reset', '--quiet', '--hard', 'FETCH_HEAD'], { cwd: work });
    await commitFile(git, work, 'a.txt', content);
    return git.run(['push', node.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work, timeoutMs: 30_000 });
  }

  it('holds the repo while an acceptor of its last push may return, and settles it once that node is declared dead', async function () {
    this.timeout(120_000);
    repoId = repoCoordinatedBy(cluster, n1, 'dead', 'node');
    await createRepo(cluster, n1, repoId);
    work = await cloneLocal(git, n1, repoId, 'dead');
    await commitFile(git, work, 'a.txt', 'seed\n');
    await git.ok(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work });
    await expectConverged(cluster, git, repoId);

    // Node 3 down; node 1 crashes once it logged the commit decision of the next push.
    await n3.stop();
    await n1.stop();
    await startWith(n1, { FAILPOINTS: 'push.coordinator.after-decision=crash' });
    const exited = n1.waitForExit();
    await commitFile(git, work, 'a.txt', 'decided, then the coordinator crashed\n');
    const held = await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work, timeoutMs: 30_000 });
    expect(held.code, 'the push whose coordinator crashed is not acknowledged').to.not.equal(0);
    expect(await exited).to.deep.equal({ code: null, signal: 'SIGKILL' });
    // Node 2, which prepared it (and of which nobody alive knows whether it accepted), dies for good.
    await n2.kill();
    await startWith(n1, {});
    await startWith(n3, {});

    // Node 1 asks node 2 (unreachable) and node 3 (never saw it: refuses) round after round, and waits.
    await eventually(() => expect(waits(), 'rounds that proved nothing').to.be.at.least(3), 30_000, 200);
    expect((await repoStateOf(n1, repoId)).in_doubt, 'node 1 still holds the push in doubt').to.equal(true);
    const refused = await pushVia(n3, 'while the repo is held\n');
    expect(refused.code, `a push while held: ${refused.stderr}`).to.not.equal(0);

    // Declaring a node that still answers is refused, and changes nothing.
    const alive = await runCli(['node', 'declare-dead', n3.url, '--node', n1.url], env);
    expect(alive.code, alive.stdout + alive.stderr).to.equal(1);
    expect(alive.stdout).to.match(/answers: it is not dead/);

    const declared = await runCli(['node', 'declare-dead', n2.url, '--node', n1.url, '--json'], env);
    expect(declared.code, declared.stdout + declared.stderr).to.equal(0);
    const report = JSON.parse(declared.stdout) as { ok: boolean; nodes: { url: string; recorded: boolean; dead_nodes: string[] }[] };
    expect(report.nodes.map((n) => [n.url, n.recorded, n.dead_nodes])).to.have.deep.members([
      [n1.url, true, [n2.url]],
      [n3.url, true, [n2.url]],
    ]);

    // `status` names the declared node on every node that recorded it (and node 2 as unreachable: exit 1).
    const status = await runCli(['status', '--node', n1.url, '--json'], env);
    expect(status.code, status.stderr).to.equal(1);
    const nodes = (JSON.parse(status.stdout) as { nodes: { url: string; reachable: boolean; dead?: string[] }[] }).nodes;
    expect(nodes.map((n) => [n.url, n.reachable, n.dead ?? null])).to.have.deep.members([
      [n1.url, true, [n2.url]],
      [n2.url, false, null],
      [n3.url, true, [n2.url]],
    ]);

    // Node 1's logged decision is a live acceptance: the push commits, the repo is free, and takes pushes.
    await eventually(async () => expect((await repoStateOf(n1, repoId)).in_doubt).to.equal(false), 30_000, 200);
    const after = await pushVia(n3, 'after the declaration\n');
    expect(after.code, `a push after the declaration: ${after.stderr}`).to.equal(0);
    const { refs } = await expectConverged(cluster, git, repoId);
    expect(refs['refs/heads/main']).to.equal((await git.ok(['rev-parse', 'HEAD'], { cwd: work })).trim());
  });

  it('fences the declared node when it returns with its old disk, and readmits it only on an empty one, which then catches up', async function () {
    this.timeout(120_000);
    await startWith(n2, {});
    // Its peers answer none of its messages, so it can confirm no read and serves none as current.
    const fenced = await n1.internal('/internal/catalog', undefined, n2.url);
    expect(fenced.status).to.equal(403);
    expect(fenced.body.error.code).to.equal('node_declared_dead');
    const read = await git.run(['ls-remote', n2.gitUrl(repoId)], { timeoutMs: 30_000 });
    expect(read.code, 'a read through the fenced node').to.not.equal(0);

    const notEmpty = await runCli(['node', 'readmit', n2.url, '--node', n1.url], env);
    expect(notEmpty.code, notEmpty.stdout + notEmpty.stderr).to.equal(1);
    expect(notEmpty.stdout).to.match(/is not empty/);

    await n2.stop();
    await fs.rm(n2.dataDir, { recursive: true, force: true });
    await startWith(n2, {});
    const readmitted = await runCli(['node', 'readmit', n2.url, '--node', n1.url], env);
    expect(readmitted.code, readmitted.stdout + readmitted.stderr).to.equal(0);
    expect(readmitted.stdout).to.match(/readmitted on every other node/);
    await waitForView(cluster);
    const { refs } = await expectConverged(cluster, git, repoId, 30_000);
    expect(refs['refs/heads/main']).to.equal((await git.ok(['rev-parse', 'HEAD'], { cwd: work })).trim());
  });
});
