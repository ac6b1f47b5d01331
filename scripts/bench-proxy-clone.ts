import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pickCoordinator } from '../lib/core/routing.js';
import {
  createRepo,
  envInt,
  getJson,
  git,
  makeTempDir,
  median,
  nowMs,
  round,
  runMain,
  sleep,
  startCluster,
  table,
  timed,
  waitConverged,
  waitFor,
  refLines,
  log,
  benchFixture,
  benchGitEnvs,
  isMain,
  type BenchFixture,
} from './bench-support.js';

// `npm run bench:proxy`: what a clone costs when it reaches a node whose copy of the repo is stale, so
// that the node proxies it (http-proxy-3) to an up-to-date node, against a clone straight from that
// up-to-date node.
//
// 1. 3-node cluster; create a repo and push the fixture (.bench/fixture.git) through node-1;
// 2. kill node-3 (SIGKILL), push one more commit through node-1 (committed on node-1 and node-2);
// 3. restart node-3 with SYNC_INTERVAL_MS=600000 and GIT_ALLOW_PROTOCOL=file. Its catch-up fetches
//    from a peer over http, which GIT_ALLOW_PROTOCOL=file refuses, so node-3 stays one generation
//    behind for the whole measurement and every read through it is proxied. (SYNC_INTERVAL_MS alone
//    does not keep it stale: a node runs its sync loop once at start and catches up right away; the
//    script measures how long that takes, from a copy of node-3's data dir taken while it was stale.)
//    Everything else node-3 does is unchanged: the freshness check before each read, the proxying,
//    and the background catch-up a proxied read starts (which here fails at the fetch; after a
//    failure, reads start the next one only after a doubling backoff, CatchUp.nudge).
// 4. `git clone --bare` through node-3 vs straight from node-1, alternating, one warm-up each, then
//    RUNS (default 5) timed runs; median; ratio proxied/direct. Every clone through node-3 must hold
//    the newest commit, and node-3 must still be behind at the end.
// Prints a table and a final JSON line. Settings (env): RUNS, FIXTURE, BENCH_DEADLINE_S. `npm run bench`
// calls benchProxyClone (without the self-catch-up measurement of step 3 when quick).

const REPO_ID = 'bench/proxied';
/** The issue's target for a clone through a stale node, against a direct one. */
export const PROXY_CLONE_TARGET = 1.1;

export interface ProxyCloneSettings {
  runs: number;
  fixture: BenchFixture;
  /** Measure how fast the stale node catches up by itself after a restart (step 3); default true. */
  selfCatchUp?: boolean;
  nodeEnv?: Record<string, string>;
}

export async function benchProxyClone(settings: ProxyCloneSettings): Promise<{ report: string; json: { proxied_s: number[]; direct_s: number[]; ratio: number; [key: string]: unknown } }> {
  // Other work on the machine skews every figure: the 1-minute load average is reported with them.
  const loadBefore = os.loadavg()[0]!;
  const { runs } = settings;
  const { dir: fixtureDir, fixture } = settings.fixture;

  const work = makeTempDir('qg-proxy-');
  const { clientEnv, serverEnv } = await benchGitEnvs(work);

  const cluster = await startCluster({ size: 3, env: { ...serverEnv, ...settings.nodeEnv } });
  const [n1, , n3] = cluster.nodes as [(typeof cluster.nodes)[0], (typeof cluster.nodes)[0], (typeof cluster.nodes)[0]];
  log(`cluster: ${cluster.urls.join(' ')}`);
  await createRepo(n1.url, REPO_ID);
  await waitConverged(cluster, REPO_ID);
  const directUrl = `${n1.url}/${REPO_ID}.git`;
  const proxiedUrl = `${n3.url}/${REPO_ID}.git`;
  const push = await timed(() => git(['push', '--quiet', '--mirror', directUrl], { ...clientEnv, GIT_DIR: fixtureDir }, { timeoutMs: 600_000 }));
  log(`push --mirror through ${n1.serverId}: ${(push.ms / 1000).toFixed(2)} s (coordinator ${cluster.nodes[cluster.urls.indexOf(pickCoordinator(REPO_ID, cluster.urls)!)]!.serverId})`);
  const atFixture = await waitConverged(cluster, REPO_ID);

  // node-3 misses one push.
  await cluster.killNode(2, 'SIGKILL');
  await waitFor(
    `${n1.serverId} sees ${n3.serverId} down`,
    async () => ((await getJson(`${n1.url}/health`)).body as { peers_reachable?: number }).peers_reachable === 1,
    15_000,
  );
  const wc = path.join(work, 'wc');
  await git(['clone', '-q', '--no-checkout', fixtureDir, wc], clientEnv);
  const head = (await git(['commit-tree', '-p', 'HEAD', '-m', 'pushed while node-3 was down', 'HEAD^{tree}'], clientEnv, { cwd: wc })).stdout.trim();
  await git(['push', '--quiet', directUrl, `${head}:refs/heads/main`], clientEnv, { cwd: wc });
  const newest = await waitConverged(cluster, REPO_ID, 30_000, [0, 1]);
  log(`pushed ${head.slice(0, 12)} with ${n3.serverId} down: generation ${atFixture.generation} -> ${newest.generation}`);
  const expected = (await refLines(['for-each-ref', '--format=%(objectname) %(refname)'], { ...clientEnv, GIT_DIR: fixtureDir })).map((l) =>
    l.endsWith(' refs/heads/main') ? `${head} refs/heads/main` : l,
  ).sort();

  // How fast node-3 catches up on its own, with SYNC_INTERVAL_MS=600000: from a copy of its stale data
  // dir, so the measured run below starts from the same state.
  let selfCatchUpMs = NaN;
  if (settings.selfCatchUp ?? true) {
    const snapshot = path.join(work, 'node-3-stale');
    await fs.cp(n3.dataDir, snapshot, { recursive: true, verbatimSymlinks: true });
    const restarted = nowMs();
    await cluster.startNode(2, { SYNC_INTERVAL_MS: '600000' });
    const readyMs = nowMs() - restarted;
    try {
      await waitConverged(cluster, REPO_ID, 30_000);
      selfCatchUpMs = nowMs() - restarted;
    } catch {
      // stayed behind
    }
    log(
      `${n3.serverId} restarted with SYNC_INTERVAL_MS=600000: ready after ${readyMs.toFixed(0)} ms, ` +
        (Number.isNaN(selfCatchUpMs) ? 'still behind after 30 s' : `caught up by itself ${selfCatchUpMs.toFixed(0)} ms after the restart (start-up sync)`),
    );
    await cluster.killNode(2, 'SIGTERM');
    await fs.rm(n3.dataDir, { recursive: true, force: true });
    await fs.cp(snapshot, n3.dataDir, { recursive: true, verbatimSymlinks: true });
  }

  // The measured setup: node-3 stale and unable to catch up.
  await cluster.startNode(2, { SYNC_INTERVAL_MS: '600000', GIT_ALLOW_PROTOCOL: 'file' });
  await sleep(500);
  const stale = await cluster.repoState(2, REPO_ID);
  if (stale.generation >= newest.generation) throw new Error(`${n3.serverId} is not behind (generation ${stale.generation}, newest ${newest.generation})`);
  log(`${n3.serverId} restarted stale: generation ${stale.generation}, newest ${newest.generation}`);

  const targets = [
    { name: `via ${n3.serverId} (stale, proxied)`, key: 'proxied', url: proxiedUrl, times: [] as number[] },
    { name: `direct from ${n1.serverId}`, key: 'direct', url: directUrl, times: [] as number[] },
  ];
  const clones = path.join(work, 'clones');
  await fs.mkdir(clones, { recursive: true });
  for (let i = 0; i <= runs; i += 1) {
    const order = i % 2 === 0 ? targets : [...targets].reverse();
    for (const target of order) {
      const dest = path.join(clones, `${target.key}-${i}.git`);
      const { ms } = await timed(() => git(['clone', '--bare', '-q', target.url, dest], clientEnv, { timeoutMs: 600_000 }));
      const got = await refLines(['for-each-ref', '--format=%(objectname) %(refname)'], { ...clientEnv, GIT_DIR: dest });
      if (JSON.stringify(got) !== JSON.stringify(expected)) {
        const missing = expected.filter((l) => !got.includes(l));
        const extra = got.filter((l) => !expected.includes(l));
        throw new Error(`clone ${target.name}: refs differ from the newest version (main should be ${head}): missing ${JSON.stringify(missing)}, unexpected ${JSON.stringify(extra)}`);
      }
      if (i > 0) target.times.push(ms / 1000);
      log(`${i === 0 ? 'warm-up ' : `run ${i}/${runs}`}  ${target.name.padEnd(28)} ${(ms / 1000).toFixed(3)} s`);
      await fs.rm(dest, { recursive: true, force: true });
    }
  }
  const after = await cluster.repoState(2, REPO_ID);
  if (after.generation >= newest.generation) throw new Error(`${n3.serverId} caught up during the measurement; the proxied figures are not all proxied`);
  const catchUpFailures = (await fs.readFile(n3.logFile, 'utf8')).split('\n').filter((l) => l.includes('catch-up failed')).length;
  await cluster.stop();

  const [proxied, direct] = targets as [(typeof targets)[0], (typeof targets)[0]];
  const ratio = median(proxied.times) / median(direct.times);
  const mb = (fixture.sizePackKiB * 1024) / 1e6;
  const report =
    '\n' +
      table(
        ['clone --bare', 'runs', 'median s', 'min s', 'max s'],
        targets.map((t) => [t.name, t.times.length, median(t.times).toFixed(3), Math.min(...t.times).toFixed(3), Math.max(...t.times).toFixed(3)]),
      ) +
      `\n\nratio proxied / direct (median): ${ratio.toFixed(3)}x ${ratio <= PROXY_CLONE_TARGET ? `ok (<= ${PROXY_CLONE_TARGET}x)` : `MISSED (> ${PROXY_CLONE_TARGET}x)`}` +
      `   (${fixture.commits} commits, ${mb.toFixed(1)} MB pack; ${n3.serverId} stayed at generation ${after.generation} < ${newest.generation}; ` +
      `every proxied clone had main = ${head.slice(0, 12)})\n` +
      `${n3.serverId} with SYNC_INTERVAL_MS=600000 alone: ` +
      (Number.isNaN(selfCatchUpMs) ? 'stayed behind for 30 s\n' : `caught up by itself ${selfCatchUpMs.toFixed(0)} ms after restart (start-up sync)\n`) +
      `load average (1 min): ${loadBefore.toFixed(2)} before, ${os.loadavg()[0]!.toFixed(2)} after\n`;
  return {
    report,
    json: {
      bench: 'proxy-clone',
      load_1min: { before: round(loadBefore, 2), after: round(os.loadavg()[0]!, 2) },
      runs,
      commits: fixture.commits,
      pack_mb: round(mb, 2),
      proxied_median_s: round(median(proxied.times)),
      direct_median_s: round(median(direct.times)),
      ratio: round(ratio),
      proxied_s: proxied.times.map((t) => round(t)),
      direct_s: direct.times.map((t) => round(t)),
      stale_generation: after.generation,
      newest_generation: newest.generation,
      newest_commit: head,
      catch_up_attempts_failed: catchUpFailures,
      self_catch_up_after_restart_ms: Number.isNaN(selfCatchUpMs) ? null : round(selfCatchUpMs, 0),
    },
  };
}

async function main(): Promise<void> {
  const { report, json } = await benchProxyClone({ runs: envInt('RUNS', 5), fixture: await benchFixture() });
  process.stdout.write(report + JSON.stringify(json) + '\n');
}

if (isMain(import.meta.url)) runMain('bench-proxy-clone', main, envInt('BENCH_DEADLINE_S', 900) * 1000);
