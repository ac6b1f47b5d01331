import { expect } from 'chai';
import { FAILPOINT_NAMES, FAILPOINT_POINTS, type FailpointName } from '../../lib/base/failpoints.js';
import { Cluster, GitClient, eventually, type ExitInfo, printLogsOnFailure, type TestNode, withCluster } from '../support/cluster.js';
import { expectNoLeftovers, expectRepoPresenceAgrees, runningNodes } from '../support/fault-checks.js';
import { cloneLocal, commitFile, createRepo, expectConverged, repoCoordinatedBy, startWith, waitForView } from '../support/push-helpers.js';

// Every named failpoint of the two-phase commit (lib/base/failpoints.ts), one row each: a node of a 3-node
// cluster SIGKILLs itself at that point of a create, delete or push, and afterwards
// - every node agrees (same refs and version for a push; repo present or absent everywhere),
// - nothing is left behind (staging, shipped packs, git lock files, quarantines, repo locks, in-doubt
//   transactions),
// - every acknowledged write is there (a push whose `git push` exited 0 is the tip on every node; a
//   create answered 201/202 exists everywhere; a delete answered 204 is gone everywhere). A write not
//   acknowledged may or may not have landed, but all nodes agree on which.
// A participant is restarted after its crash. A coordinator is first kept down, as if for good: the two
// nodes left must converge and take a new write within 30 s (with the spec's timers) without it; then it
// is restarted and must converge too.
//
// One cluster serves every row (each with its own repo, made before any failpoint is armed) to keep
// the file short. node-1 is the victim of every row: it coordinates the coordinator rows and is a
// participant of the others (coordinated by node-2 or node-3). After its crash it is started again
// already armed with the next row's failpoint, or with none after the last row; a failed row restarts
// every node without failpoints and the next row arms the victim itself.

type Op = 'create' | 'delete' | 'push';
const OPS: readonly Op[] = ['create', 'delete', 'push'];
const POINT_ORDER: readonly string[] = [...FAILPOINT_POINTS.coordinator, ...FAILPOINT_POINTS.participant];
interface Row {
  name: FailpointName;
  op: Op;
  role: 'coordinator' | 'participant';
  point: string;
}

/**
 * Every name once, ordered so that two rows in a row never share an op: the victim is restarted after
 * its crash already armed for the next row, and recovering the previous row's transaction at that
 * restart (same op) must not fire the next row's failpoint.
 */
const ROWS: Row[] = (['coordinator', 'participant'] as const).flatMap((role) =>
  FAILPOINT_NAMES.filter((n) => n.split('.')[1] === role)
    .map((name) => {
      const [op, , point] = name.split('.') as [Op, Row['role'], string];
      return { name, op, role, point };
    })
    .sort((a, b) => POINT_ORDER.indexOf(a.point) - POINT_ORDER.indexOf(b.point) || OPS.indexOf(a.op) - OPS.indexOf(b.op)),
);

/** How long a write may stay impossible once one node is dead (issue 7, defect 5). */
const WRITABLE_WITHIN_MS = 30_000;
/** Room for a failpoint to fire once the write was sent: it fires within the write's own round trips. */
const CRASH_WITHIN_MS = 20_000;

describe('failpoints: a node killed at each point of the two-phase commit (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  /** node-1 is the victim of every row: restarting it already armed for the next row saves a restart per row. */
  let victim: TestNode;
  const runs = new Map<FailpointName, PushRow | RepoRow>();
  /** The FAILPOINTS the running victim was started with ('' for none). */
  let armed = '';

  withCluster(3, {}, (c, g) => {
    [cluster, git] = [c, g];
    victim = c.nodes[0]!;
  });

  /** (Re)starts the victim with `failpoints` unless it already runs with exactly those. */
  async function arm(failpoints: string): Promise<void> {
    if (victim.running && armed === failpoints) return;
    if (victim.running) await victim.stop();
    await startWith(victim, failpoints === '' ? {} : { FAILPOINTS: failpoints });
    armed = failpoints;
    await waitForView(cluster);
  }

  before(async function () {
    this.timeout(120_000);
    // A coordinator row is coordinated by the victim; a participant row by node-2 or node-3 in turn.
    ROWS.forEach((row, i) => {
      const coordinator = row.role === 'coordinator' ? victim : cluster.nodes[1 + (i % 2)]!;
      const slug = row.name.replaceAll('.', '-');
      runs.set(row.name, row.op === 'push' ? new PushRow(cluster, git, coordinator, slug) : new RepoRow(cluster, git, coordinator, row.op, `fp/${slug}`));
    });
    // Every row's repo is made before any failpoint is armed: a seed push would fire a push failpoint.
    await Promise.all([...runs.values()].map((run) => run.setup()));
    await arm(`${ROWS[0]!.name}=crash`);
  });

  afterEach(async function () {
    if (this.currentTest?.state !== 'failed') return;
    printLogsOnFailure(this, cluster);
    // The next row starts from all three nodes up; it re-arms the victim itself.
    armed = '';
    await cluster.heal();
  });

  it('covers every failpoint name once', function () {
    expect(ROWS.map((r) => r.name).sort()).to.deep.equal([...FAILPOINT_NAMES].sort()).and.to.have.length(21);
  });

  ROWS.forEach((row, index) => {
    it(`${row.name}: the cluster converges with nothing left behind and every acknowledged ${row.op} kept`, async function () {
      this.timeout(90_000);
      const run = runs.get(row.name)!;
      const next = ROWS[index + 1];
      await arm(`${row.name}=crash`);

      const exited = victim.waitForExit();
      await run.act();
      const exit = await Promise.race([exited, new Promise<undefined>((resolve) => setTimeout(resolve, CRASH_WITHIN_MS))]);
      expect(exit as ExitInfo | undefined, `${victim.serverId} did not crash at ${row.name}:\n${victim.logTail()}`).to.deep.equal({ code: null, signal: 'SIGKILL' });
      armed = '';

      if (row.role === 'coordinator') {
        // The coordinator stays down: the two nodes left must finish (or abort) its transaction alone,
        // and take a new write to the repo.
        await run.check(WRITABLE_WITHIN_MS);
        await eventually(() => run.write(), WRITABLE_WITHIN_MS, 500);
      }
      // Back (armed for the next row): all three converge, the write made without it included.
      await arm(next ? `${next.name}=crash` : '');
      await run.check(30_000);
    });
  });
});

/** A push coordinated by `coordinator`: one commit seeded before the failpoint is armed, one pushed into it. */
class PushRow {
  readonly repoId: string;
  private work = '';
  private seed = '';
  private attempted: string[] = [];
  /** Commits whose `git push` exited 0, in push order. */
  private readonly acked: string[] = [];
  private writes = 0;

  constructor(
    private readonly cluster: Cluster,
    private readonly git: GitClient,
    private readonly coordinator: TestNode,
    slug: string,
  ) {
    this.repoId = repoCoordinatedBy(cluster, coordinator, 'fp', slug);
  }

  async setup(): Promise<void> {
    await createRepo(this.cluster, this.coordinator, this.repoId);
    this.work = await cloneLocal(this.git, this.coordinator, this.repoId, 'fp');
    this.seed = await commitFile(this.git, this.work, 'a.txt', 'seed\n');
    // Right after a create a replica may still hold the repo for a moment ("another change ... in
    // progress"): the seed is not what this spec tests, so it is pushed again until accepted.
    await eventually(async () => {
      const res = await this.git.run(['push', this.coordinator.gitUrl(this.repoId), 'HEAD:refs/heads/main'], { cwd: this.work, timeoutMs: 60_000 });
      expect(res.code, `seed push: ${res.stderr}`).to.equal(0);
    }, 15_000, 200);
    this.acked.push(this.seed);
    await expectConverged(this.cluster, this.git, this.repoId);
  }

  async act(): Promise<void> {
    const oid = await commitFile(this.git, this.work, 'a.txt', 'under the failpoint\n');
    this.attempted.push(oid);
    const res = await this.git.run(['push', this.coordinator.gitUrl(this.repoId), 'HEAD:refs/heads/main'], { cwd: this.work, timeoutMs: 60_000 });
    if (res.code === 0) this.acked.push(oid);
  }

  /** A new commit on top of the agreed tip, pushed through a live node (routed to a live coordinator). */
  async write(): Promise<void> {
    const live = runningNodes(this.cluster);
    const { refs } = await expectConverged(this.cluster, this.git, this.repoId, 5000);
    const tip = refs['refs/heads/main']!;
    await this.git.ok(['reset', '--quiet', '--hard', tip], { cwd: this.work });
    this.writes += 1;
    const oid = await commitFile(this.git, this.work, 'b.txt', `written without the coordinator ${this.writes}\n`);
    this.attempted.push(oid);
    const res = await this.git.run(['push', live[0]!.gitUrl(this.repoId), 'HEAD:refs/heads/main'], { cwd: this.work, timeoutMs: 30_000 });
    expect(res.code, `push through ${live[0]!.serverId}: ${res.stderr}`).to.equal(0);
    this.acked.push(oid);
  }

  /** Every running node at one version with the same refs, the last acknowledged commit at or behind the tip, nothing left behind. */
  async check(timeoutMs: number): Promise<void> {
    const running = runningNodes(this.cluster);
    const { refs } = await expectConverged(this.cluster, this.git, this.repoId, timeoutMs);
    const tip = refs['refs/heads/main'];
    const last = this.acked[this.acked.length - 1]!;
    // Nothing was pushed after an unacknowledged attempt but the attempts themselves: the tip is the
    // last acknowledged commit, or a later attempt that landed without its answer.
    const allowed = [last, ...this.attempted.slice(this.attempted.indexOf(last) + 1)];
    expect(allowed, `main on every node is ${tip}; acknowledged ${this.acked.join(', ')}`).to.include(tip);
    for (const node of running) {
      for (const oid of this.acked) {
        const res = await this.git.run(['--git-dir', node.repoDir(this.repoId), 'merge-base', '--is-ancestor', oid, tip!]);
        expect(res.code, `acknowledged ${oid} is not in main on ${node.serverId}`).to.equal(0);
      }
    }
    await expectNoLeftovers(running, this.repoId, timeoutMs);
  }
}

/** A create or delete sent to `coordinator` (the node that receives the API call coordinates it). */
class RepoRow {
  /** What the acknowledged writes say the repo must be: undefined while nothing was acknowledged since setup. */
  private mustExist: boolean | undefined;

  constructor(
    private readonly cluster: Cluster,
    private readonly git: GitClient,
    private readonly coordinator: TestNode,
    private readonly op: 'create' | 'delete',
    readonly repoId: string,
  ) {}

  async setup(): Promise<void> {
    if (this.op === 'delete') {
      await createRepo(this.cluster, this.coordinator, this.repoId);
      this.mustExist = true;
    }
  }

  async act(): Promise<void> {
    // Unacknowledged, the write may or may not have landed: only agreement is required then.
    this.mustExist = undefined;
    const status = await (this.op === 'create' ? this.coordinator.createRepo(this.repoId) : this.coordinator.deleteRepo(this.repoId)).then(
      (r) => r.status,
      () => 0, // the coordinator died mid-request: not acknowledged
    );
    if (this.op === 'create' && (status === 201 || status === 202)) this.mustExist = true;
    if (this.op === 'delete' && status === 204) this.mustExist = false;
  }

  /** Through a live node: create the repo if it is absent, delete it if present; either must be accepted. */
  async write(): Promise<void> {
    const live = runningNodes(this.cluster);
    const exists = await expectRepoPresenceAgrees(live, this.repoId, 5000);
    if (exists) {
      const res = await live[0]!.deleteRepo(this.repoId);
      expect(res.status, `delete through ${live[0]!.serverId}: ${res.text}`).to.equal(204);
      this.mustExist = false;
    } else {
      const res = await live[0]!.createRepo(this.repoId);
      expect(res.status, `create through ${live[0]!.serverId}: ${res.text}`).to.be.oneOf([201, 202]);
      this.mustExist = true;
    }
  }

  async check(timeoutMs: number): Promise<void> {
    const running = runningNodes(this.cluster);
    const exists = await expectRepoPresenceAgrees(running, this.repoId, timeoutMs);
    if (this.mustExist !== undefined) expect(exists, `acknowledged: ${this.repoId} ${this.mustExist ? 'exists' : 'is gone'}`).to.equal(this.mustExist);
    await expectNoLeftovers(running, this.repoId, timeoutMs);
  }
}
