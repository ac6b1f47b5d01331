import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { LONG_2PC_ENV, Cluster, GitClient, type GitResult, type TestNode, withCluster } from '../support/cluster.js';
import {
  PushGate,
  asPeer,
  cloneLocal,
  commitFile,
  createRepo,
  diskRefs,
  diskState,
  expectConverged,
  expectPushed,
  expectReplicasAgree,
  repoCoordinatedBy,
  repoVersion,
  waitForView,
} from '../support/push-helpers.js';

// Pushes that race or lose their quorum, on a 3-node cluster (quorum 2) and a 2-node one (quorum 2):
// a push based on refs that moved meanwhile is rejected with a message that says to fetch; pushes to
// different branches do not get in each other's way; two coordinators at once (the client bypasses
// routing with the cluster secret) never both win and never leave replicas apart; without a quorum
// a push is rejected naming the unreachable nodes and nothing moves. Every spec ends by comparing
// every node's refs on disk and running git fsck on each.

const CONFLICT = /remote: quorum-git: refs\/heads\/main was updated by another push since you fetched; fetch, merge or rebase, and push again/;

describe('replicated pushes under contention and faults (3-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;
  const gates: PushGate[] = [];

  async function gate(node: TestNode): Promise<PushGate> {
    const g = await PushGate.start(node);
    gates.push(g);
    return g;
  }

  /** A repo with one commit on main, a clone of it per node (each cloned through that node), and its oid. */
  async function seeded(repoId: string): Promise<{ clones: string[]; base: string }> {
    await createRepo(cluster, n1, repoId);
    const first = await cloneLocal(git, n1, repoId, 'seed');
    const base = await commitFile(git, first, 'base.txt', 'base\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: first }));
    await expectConverged(cluster, git, repoId);
    const clones = await Promise.all(cluster.nodes.map((n) => cloneLocal(git, n, repoId, `clone-${n.serverId}`)));
    return { clones, base };
  }

  afterEach(async function () {
    await Promise.all(gates.splice(0).map((g) => g.close()));
  });

  // Commit re-sends are short and few, so a lost commit costs little time.
  const env = { ...LONG_2PC_ENV, COMMIT_TIMEOUT_MS: '1000', COMMIT_RESENDS: '2' };
  withCluster(3, { env, healAfterEach: true }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, n2, n3] = c.nodes as [TestNode, TestNode, TestNode];
  });

  describe('two pushes to one branch through different nodes', function () {
    it('rejects the push whose refs moved after it fetched, telling the user to fetch, and changes nothing for it', async function () {
      const repoId = repoCoordinatedBy(cluster, n1, 'race', 'held');
      const { clones } = await seeded(repoId);
      const mine = await commitFile(git, clones[1]!, 'a.txt', 'from clone 2\n');
      const theirs = await commitFile(git, clones[2]!, 'b.txt', 'from clone 3\n');
      // Clone 3's push has read the refs (main at base) when clone 2's push lands.
      const held = await gate(n3);
      const late = git.run(['push', held.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: clones[2]! });
      await held.waitHeld();
      expectPushed(await git.run(['push', n2.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: clones[1]! }));
      held.release();
      const rejected = await late;
      expect(rejected.code).to.not.equal(0);
      expect(rejected.stderr).to.match(/! \[remote rejected\] HEAD -> main/);
      expect(rejected.stderr).to.match(CONFLICT);
      const agreed = await expectConverged(cluster, git, repoId);
      expect(agreed.refs).to.deep.equal({ 'refs/heads/main': mine });
      expect(agreed.generation).to.equal(2);
      // The rejected commit reached no replica's refs.
      for (const node of cluster.nodes) expect(Object.values(await diskRefs(git, node, repoId))).to.not.include(theirs);
    });

    it('lets exactly one of two simultaneous pushes win, and the other is told to fetch (2 rounds)', async function () {
      const repoId = repoCoordinatedBy(cluster, n2, 'race', 'simultaneous');
      const { clones } = await seeded(repoId);
      const [a, b] = [clones[0]!, clones[2]!];
      for (let round = 1; round <= 2; round += 1) {
        for (const dir of [a, b]) await git.ok(['pull', '--quiet', '--rebase', 'origin', 'main'], { cwd: dir });
        const oids = [await commitFile(git, a, 'a.txt', `a ${round}\n`), await commitFile(git, b, 'b.txt', `b ${round}\n`)];
        const results = await Promise.all([
          git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: a }),
          git.run(['push', n3.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: b }),
        ]);
        const winners = results.flatMap((r, i) => (r.code === 0 ? [i] : []));
        expect(winners, `round ${round}: ${results.map((r) => r.stderr).join('\n---\n')}`).to.have.length(1);
        const loser = results[1 - winners[0]!]!;
        // Rejected by the node (the refs moved after its advertisement) or by git itself (they moved before).
        expect(loser.stderr).to.match(/fetch/);
        expect(loser.stderr).to.match(/! \[(remote )?rejected\]/);
        const agreed = await expectConverged(cluster, git, repoId);
        expect(agreed.refs, `round ${round}`).to.deep.equal({ 'refs/heads/main': oids[winners[0]!] });
        expect(agreed.generation).to.equal(round + 1);
      }
    });

    it('lets simultaneous pushes to different branches of one repo both succeed', async function () {
      const repoId = repoCoordinatedBy(cluster, n3, 'race', 'branches');
      const { clones, base } = await seeded(repoId);
      // Held: clone 2's push saw the refs before clone 1's landed; its own branch is untouched, so it commits.
      const held = await gate(n2);
      const one = await commitFile(git, clones[0]!, 'one.txt', 'one\n');
      const two = await commitFile(git, clones[1]!, 'two.txt', 'two\n');
      const late = git.run(['push', held.gitUrl(repoId), 'HEAD:refs/heads/two'], { cwd: clones[1]! });
      await held.waitHeld();
      expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/one'], { cwd: clones[0]! }));
      held.release();
      expectPushed(await late);
      // And both at once, through two nodes.
      const three = await commitFile(git, clones[0]!, 'three.txt', 'three\n');
      const four = await commitFile(git, clones[2]!, 'four.txt', 'four\n');
      const both = await Promise.all([
        git.run(['push', n2.gitUrl(repoId), 'HEAD:refs/heads/three'], { cwd: clones[0]! }),
        git.run(['push', n3.gitUrl(repoId), 'HEAD:refs/heads/four'], { cwd: clones[2]! }),
      ]);
      both.forEach((r) => expectPushed(r));
      const agreed = await expectConverged(cluster, git, repoId);
      expect(agreed.refs).to.deep.equal({
        'refs/heads/main': base,
        'refs/heads/one': one,
        'refs/heads/two': two,
        'refs/heads/three': three,
        'refs/heads/four': four,
      });
      expect(agreed.generation).to.equal(5);
    });
  });

  describe('two coordinators at once', function () {
    it('never lets two pushes to one branch both win, and never leaves the replicas apart (2 rounds)', async function () {
      // The secret header makes each node serve and coordinate the push it receives, as two nodes with
      // different views of who is up would.
      const repoId = repoCoordinatedBy(cluster, n3, 'dual', 'coordinators');
      const { clones } = await seeded(repoId);
      const [a, b] = [clones[0]!, clones[1]!];
      let main = (await diskRefs(git, n1, repoId))['refs/heads/main']!;
      let generation = 1;
      let wins = 0;
      for (let round = 1; round <= 2; round += 1) {
        for (const dir of [a, b]) {
          await git.ok(['fetch', '--quiet', 'origin'], { cwd: dir });
          await git.ok(['reset', '--quiet', '--hard', 'origin/main'], { cwd: dir });
        }
        const oids = [await commitFile(git, a, 'a.txt', `a ${round}\n`), await commitFile(git, b, 'b.txt', `b ${round}\n`)];
        // Both have read the refs before either sends its pack; then both go at the same moment.
        const [ga, gb] = [await gate(n1), await gate(n2)];
        const pushes = [
          git.run(asPeer(cluster, ['push', ga.gitUrl(repoId), 'HEAD:refs/heads/main']), { cwd: a }),
          git.run(asPeer(cluster, ['push', gb.gitUrl(repoId), 'HEAD:refs/heads/main']), { cwd: b }),
        ];
        await Promise.all([ga.waitHeld(), gb.waitHeld()]);
        ga.release();
        gb.release();
        const results: GitResult[] = await Promise.all(pushes);
        const winners = results.flatMap((r, i) => (r.code === 0 ? [i] : []));
        expect(winners.length, `round ${round}: ${results.map((r) => r.stderr).join('\n---\n')}`).to.be.at.most(1);
        for (const r of results) if (r.code !== 0) expect(r.stderr).to.match(/! \[remote rejected\] HEAD -> main/);
        if (winners.length === 1) {
          main = oids[winners[0]!]!;
          generation += 1;
          wins += 1;
        }
        const agreed = await expectConverged(cluster, git, repoId);
        expect(agreed.refs, `round ${round}`).to.deep.equal({ 'refs/heads/main': main });
        expect(agreed.generation, `round ${round}`).to.equal(generation);
        for (const oid of oids) {
          if (oid === main) continue;
          for (const node of cluster.nodes) expect(Object.values(await diskRefs(git, node, repoId)), node.serverId).to.not.include(oid);
        }
      }
      // With a third node to break the tie, some round has a winner.
      expect(wins).to.be.at.least(1);
    });
  });

  describe('replicas that cannot lock the refs (a lock left by a crashed git)', function () {
    it('refuse the push when they vote, naming them; nothing moves anywhere, and the push goes through once the lock is gone', async function () {
      // A ref lock left behind by a crashed git on both peers. A peer takes its refs' locks in git when
      // it votes (lib/git/ref-txn.ts), so it votes no at once rather than fail after the decision.
      const repoId = repoCoordinatedBy(cluster, n1, 'apply', 'fails');
      const { clones, base } = await seeded(repoId);
      const before = await expectReplicasAgree(cluster, git, repoId);
      const locks = [n2, n3].map((n) => path.join(n.repoDir(repoId), 'refs', 'heads', 'main.lock'));
      await Promise.all(locks.map((f) => fs.writeFile(f, '')));
      const pushed = await commitFile(git, clones[0]!, 'blocked.txt', 'blocked\n');
      const push = await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: clones[0]! });
      expect(push.code, push.stderr).to.not.equal(0);
      expect(push.stderr).to.match(/could not commit on a quorum of 2 of 3 nodes; unreachable: none; could not prepare it: /);
      const unprepared = /could not prepare it: ([^;\n]*)/.exec(push.stderr)![1]!.split(', ').sort();
      expect(unprepared).to.deep.equal([n2.url, n3.url].sort());
      expect(push.stderr).to.match(/! \[remote rejected\] HEAD -> main/);
      const agreed = await expectConverged(cluster, git, repoId);
      expect(agreed.refs).to.deep.equal({ 'refs/heads/main': base });
      expect(agreed.generation).to.equal(before.generation);

      await Promise.all(locks.map((f) => fs.rm(f)));
      expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: clones[0]! }));
      const after = await expectConverged(cluster, git, repoId);
      expect(after.refs).to.deep.equal({ 'refs/heads/main': pushed });
      expect(after.generation).to.equal(before.generation + 1);
    });

    it('on the coordinator: the push is refused before the peers commit it, not rejected by receive-pack after', async function () {
      // receive-pack moves the coordinator's refs only after the hook said yes; a stale lock there would
      // make it report "failed to lock" for a push the peers had already committed.
      const repoId = repoCoordinatedBy(cluster, n1, 'coordinator', 'locked');
      const { clones, base } = await seeded(repoId);
      const before = await expectReplicasAgree(cluster, git, repoId);
      const lock = path.join(n1.repoDir(repoId), 'refs', 'heads', 'main.lock');
      await fs.writeFile(lock, '');
      const pushed = await commitFile(git, clones[1]!, 'blocked.txt', 'blocked\n');
      const push = await git.run(['push', n2.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: clones[1]! });
      expect(push.code, push.stderr).to.not.equal(0);
      expect(push.stderr).to.include(`could not commit on a quorum of 2 of 3 nodes; unreachable: none; could not prepare it: ${n1.url}`);
      expect(push.stderr).to.match(/! \[remote rejected\] HEAD -> main/);
      const agreed = await expectConverged(cluster, git, repoId);
      expect(agreed).to.deep.include({ refs: { 'refs/heads/main': base }, generation: before.generation });
      expect(n1.logText()).to.include('main.lock');

      await fs.rm(lock);
      expectPushed(await git.run(['push', n2.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: clones[1]! }));
      expect((await expectConverged(cluster, git, repoId)).refs).to.deep.equal({ 'refs/heads/main': pushed });
    });
  });

  describe('without a quorum', function () {
    it('rejects a push with two of three nodes down, naming them, and nothing moves anywhere', async function () {
      const repoId = repoCoordinatedBy(cluster, n2, 'lost', 'quorum');
      const { clones, base } = await seeded(repoId);
      const before = await expectReplicasAgree(cluster, git, repoId);
      await Promise.all([n2.stop(), n3.stop()]);
      await waitForView(cluster);
      const attempted = await commitFile(git, clones[0]!, 'lost.txt', 'never replicated\n');
      const push = await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main', 'HEAD:refs/heads/new-branch'], { cwd: clones[0]! });
      expect(push.code).to.not.equal(0);
      expect(push.stderr).to.match(/! \[remote rejected\] HEAD -> main/);
      expect(push.stderr).to.match(/could not commit on a quorum of 2 of 3 nodes; unreachable: /);
      const unreachable = /unreachable: ([^;\n]*)/.exec(push.stderr)![1]!.split(', ').sort();
      expect(unreachable).to.deep.equal([n2.url, n3.url].sort());
      expect(await diskState(git, n1, repoId)).to.deep.equal({ refs: before.refs, head: before.head });
      expect((await repoVersion(n1, repoId)).generation).to.equal(before.generation);

      await cluster.heal();
      const agreed = await expectConverged(cluster, git, repoId);
      expect(agreed).to.deep.equal({ refs: { 'refs/heads/main': base }, head: 'refs/heads/main', generation: before.generation });
      for (const node of cluster.nodes) expect(Object.values(await diskRefs(git, node, repoId))).to.not.include(attempted);
    });
  });
});

describe('replicated pushes without a quorum (2-node cluster)', function () {
  let cluster: Cluster;
  let git: GitClient;
  let n1: TestNode;
  let n2: TestNode;

  withCluster(2, { healAfterEach: true }, (c, g) => {
    [cluster, git] = [c, g];
    [n1, n2] = c.nodes as [TestNode, TestNode];
  });

  it('rejects a push with the other node down (quorum 2 of 2), and both nodes keep the old state', async function () {
    const repoId = 'pair/lost';
    await createRepo(cluster, n1, repoId);
    const work = await cloneLocal(git, n1, repoId, 'pair-lost');
    const base = await commitFile(git, work, 'a.txt', 'a\n');
    expectPushed(await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work }));
    await expectConverged(cluster, git, repoId);

    await n2.stop();
    await waitForView(cluster);
    await commitFile(git, work, 'b.txt', 'b\n');
    const push = await git.run(['push', n1.gitUrl(repoId), 'HEAD:refs/heads/main'], { cwd: work });
    expect(push.code).to.not.equal(0);
    expect(push.stderr).to.match(/! \[remote rejected\] HEAD -> main/);
    expect(push.stderr).to.include(`could not commit on a quorum of 2 of 2 nodes; unreachable: ${n2.url}`);
    // With W = N every node's own copy is current, so the survivor still serves reads (R = 1).
    expect(await git.ok(['ls-remote', n1.gitUrl(repoId), 'refs/heads/main'])).to.equal(`${base}\trefs/heads/main\n`);

    await cluster.heal();
    const agreed = await expectConverged(cluster, git, repoId);
    expect(agreed).to.deep.equal({ refs: { 'refs/heads/main': base }, head: 'refs/heads/main', generation: 1 });
  });
});
