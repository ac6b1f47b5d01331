import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pickCoordinator } from '../lib/core/routing.js';
import { GIT_FSYNC } from '../lib/git/hooks.js';
import {
  createRepo,
  envInt,
  git,
  gitClientEnv,
  isMain,
  makeTempDir,
  median,
  nowMs,
  peakRssKiB,
  percentile,
  resetPeakRss,
  round,
  run,
  runMain,
  startCluster,
  startHttpBackend,
  table,
  timed,
  waitConverged,
  type BenchFixture,
  type Cluster,
  refLines,
  log,
  benchFixture,
  benchGitEnvs,
} from './bench-support.js';

// `npm run bench:push`: how fast a quorum-git cluster takes pushes, against git's own `git http-backend`
// behind nginx + fcgiwrap (http.receivepack enabled per repo) on the same machine. Every push to a
// node runs its pre-receive hook, which ships the pack to the peers and commits on a quorum before git
// says ok; http-backend just runs receive-pack.
//
// a. full push (`git push --mirror`) of the fixture (.bench/fixture.git, made by gen-fixture if missing)
//    into a fresh empty repo: 3-node cluster vs http-backend, then a 2-node cluster vs http-backend.
//    One warm-up each, then RUNS (default 3) timed runs, alternating; median; ratio node/http-backend.
//    The cluster is measured twice: round-robin (run i pushes to node i mod n, so most pushes reach a
//    node that proxies them to the repo's coordinator, as clients behind a load balancer do) and
//    straight to the repo's coordinator.
// b. one-commit fast-forward push on top of the pushed fixture: round-robin over the nodes, straight to
//    the coordinator, and http-backend; SMALL_RUNS (default 20: a one-commit push takes tens of
//    milliseconds, and on a shared 2-core machine a median of 10 moved by a tenth between runs).
// c. BULK_BRANCHES (default 5000) new branches in one push (refs only: they point at commits the
//    server has), round-robin over the nodes vs http-backend, RUNS runs. 0 leaves it out.
// d. CONCURRENCY (default 8; a list such as "8,32" runs each) clients, each with its own repo on the
//    3-node cluster (round-robin over the nodes), each PUSHES (default 10) times pushing one commit and
//    then cloning its repo: operations/s, p50/p99 latency, errors, and each node's peak RSS (VmHWM,
//    reset before the load). Commits are made before the clock starts. The same load against
//    http-backend is run alongside, as the baseline (all processes share this machine's cores).
// Settings (env): RUNS, SMALL_RUNS, PUSHES, CONCURRENCY, BULK_BRANCHES, FIXTURE, BENCH_DEADLINE_S;
// BREAKDOWN=1 prints where the one-commit pushes to the coordinator spend their time, taken from the
// nodes' request and txn logs (the nodes log at info, the default level, in `npm run bench` too).
// Prints a table and a final JSON line. `npm run bench` calls benchPush.

const PUSH_TIMEOUT_MS = 600_000;

interface Target {
  name: string;
  key: string;
  times: number[];
}

export interface ConcurrentResult {
  clients: number;
  ops_each: number;
  ok: number;
  errors: number;
  error_samples: string[];
  proxied_clients: number;
  seconds: number;
  ops_per_s: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  push_p99_ms: number;
  clone_p99_ms: number;
  /** Each node's peak RSS during the load, KiB (quorum-git only). */
  peak_rss_kib: number[];
  /**
   * Error answers the nodes gave during the load, by code, summed over the nodes (their
   * quorum_git_http_errors_total; quorum-git only): what a client's bare "HTTP 503" was.
   */
  error_codes: Record<string, number>;
}

/** What a failed git said: the nodes' own lines (`remote: quorum-git: ...`, the reason of a refused push) and git's last two. */
function gitFailure(stderr: string): string {
  const lines = stderr.trim().split('\n');
  return [...lines.filter((l) => l.includes('quorum-git:')).slice(0, 2), ...lines.slice(-2)].join(' | ');
}

/** Every node's error answers so far by code (GET /metrics, quorum_git_http_errors_total), summed. */
async function errorAnswers(urls: readonly string[]): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const url of urls) {
    const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
    for (const m of text.matchAll(/^quorum_git_http_errors_total\{code="([a-z_]+)"\} (\d+)$/gm)) counts.set(m[1]!, (counts.get(m[1]!) ?? 0) + Number(m[2]));
  }
  return counts;
}

export interface PairResult {
  node_s: number[];
  http_backend_s: number[];
  node_median_s: number;
  http_backend_median_s: number;
  ratio: number;
}

export interface FullPushResult extends PairResult {
  nodes: number;
  coordinator_s: number[];
  coordinator_median_s: number;
  coordinator_ratio: number;
  /** http-backend into repos with the nodes' core.fsync (refs fsynced too, which git's default skips). */
  fsync_http_backend_s: number[];
  fsync_http_backend_median_s: number;
  /** The headline (round-robin) against that baseline. */
  fsync_ratio: number;
}

export interface PushSettings {
  runs: number;
  smallRuns: number;
  /** Operations (push + clone) per client in d. */
  pushes: number;
  /** d runs once per number of clients. */
  concurrencies: number[];
  /** Branches in c's single push; 0 leaves c out. */
  bulkBranches: number;
  /** Also a. on a 2-node cluster. */
  twoNodes: boolean;
  breakdown: boolean;
  fixture: BenchFixture;
  nodeEnv?: Record<string, string>;
}

export interface PushResult {
  report: string;
  json: {
    full_push_3: FullPushResult;
    full_push_2?: FullPushResult;
    small_push: PairResult & {
      coordinator_s: number[];
      coordinator_median_s: number;
      coordinator_ratio: number;
      /** http-backend with its refs packed (pack-refs --all), as the nodes' housekeeping packs them. */
      packed_http_backend_s: number[];
      packed_http_backend_median_s: number;
      packed_ratio: number;
    };
    bulk_branches?: PairResult & { branches: number };
    concurrent: Array<{ node: ConcurrentResult; http_backend: ConcurrentResult }>;
    [key: string]: unknown;
  };
}

function fmtS(ms: number): string {
  return (ms / 1000).toFixed(3);
}

function pair(node: number[], http: number[]): PairResult {
  const nodeMedian = median(node);
  const httpMedian = median(http);
  return {
    node_s: node.map((t) => round(t)),
    http_backend_s: http.map((t) => round(t)),
    node_median_s: round(nodeMedian),
    http_backend_median_s: round(httpMedian),
    ratio: round(nodeMedian / httpMedian),
  };
}

export async function benchPush(settings: PushSettings): Promise<PushResult> {
  // Other work on the machine skews every figure: the 1-minute load average is reported with them.
  const loadBefore = os.loadavg()[0]!;
  const { runs, smallRuns, pushes } = settings;
  const { dir: fixtureDir, fixture } = settings.fixture;
  const fixtureEnv = (env: NodeJS.ProcessEnv): NodeJS.ProcessEnv => ({ ...env, GIT_DIR: fixtureDir });

  const work = makeTempDir('qg-push-');
  const { clientEnv, serverEnv } = await benchGitEnvs(work);
  const expected = await refLines(['for-each-ref', '--format=%(objectname) %(refname)'], fixtureEnv(clientEnv));

  // The reference: one fresh bare repo per push under the project root, receive-pack enabled.
  const projectRoot = path.join(work, 'git-root');
  await fs.mkdir(projectRoot, { recursive: true });
  const backend = await startHttpBackend(work, projectRoot, serverEnv);
  if (serverEnv.HOME === undefined) throw new Error('benchGitEnvs gave the server no HOME');
  const serverGitEnv = gitClientEnv(serverEnv.HOME, {});
  let httpRepos = 0;
  /** `fsyncRefs`: the repo fsyncs what a node's gits do (GIT_FSYNC), refs included; git's default does not. */
  const newHttpRepo = async (fsyncRefs = false): Promise<string> => {
    httpRepos += 1;
    const name = `bench/push-${httpRepos}.git`;
    const dir = path.join(projectRoot, name);
    await git(['init', '--bare', '-q', dir], serverGitEnv);
    await git(['config', 'http.receivepack', 'true'], { ...serverGitEnv, GIT_DIR: dir });
    if (fsyncRefs) await git(['config', 'core.fsync', GIT_FSYNC], { ...serverGitEnv, GIT_DIR: dir });
    return `${backend.url}/${name}`;
  };

  let nodeRepos = 0;
  /** A fresh empty repo on the cluster, live on every node; returns its id and its coordinator's index. */
  const newNodeRepo = async (cluster: Cluster, prefix = 'bench/push'): Promise<{ repoId: string; coordinator: number }> => {
    nodeRepos += 1;
    const repoId = `${prefix}-${nodeRepos}`;
    await createRepo(cluster.urls[0]!, repoId);
    await waitConverged(cluster, repoId);
    const coordinator = cluster.urls.indexOf(pickCoordinator(repoId, cluster.urls)!);
    return { repoId, coordinator };
  };
  interface PushedRepo {
    repoId: string;
    url: string;
    coordinator: number;
  }

  // ---- a. full push of the fixture ----------------------------------------------------------------
  const fullPush = async (cluster: Cluster): Promise<{ result: FullPushResult; spread: PushedRepo[]; direct: PushedRepo[]; http: string[] }> => {
    const size = cluster.nodes.length;
    const spreadTarget: Target = { name: `quorum-git ${size} nodes, round-robin`, key: 'spread', times: [] };
    const directTarget: Target = { name: `quorum-git ${size} nodes, coordinator`, key: 'direct', times: [] };
    const httpTarget: Target = { name: 'nginx+git-http-backend', key: 'http', times: [] };
    // Beside the headline's baseline: http-backend fsyncing refs as the nodes do, so the report can
    // say how much of the gap is durability git's default does not pay for.
    const fsyncTarget: Target = { name: 'http-backend, refs fsynced', key: 'http-fsync', times: [] };
    const targets = [spreadTarget, directTarget, httpTarget, fsyncTarget];
    const pushed = { spread: [] as PushedRepo[], direct: [] as PushedRepo[], http: [] as string[] };
    for (let i = 0; i <= runs; i += 1) {
      const order = targets.map((_, k) => targets[(k + i) % targets.length]!);
      for (const target of order) {
        let url: string;
        let repoId = '';
        if (target === httpTarget) {
          url = await newHttpRepo();
          pushed.http.push(url);
        } else if (target === fsyncTarget) {
          url = await newHttpRepo(true);
        } else {
          const repo = await newNodeRepo(cluster);
          repoId = repo.repoId;
          const nodeIndex = target === spreadTarget ? i % size : repo.coordinator;
          url = `${cluster.urls[nodeIndex]}/${repo.repoId}.git`;
          pushed[target === spreadTarget ? 'spread' : 'direct'].push({ repoId, url, coordinator: repo.coordinator });
        }
        const { ms } = await timed(() => git(['push', '--quiet', '--mirror', url], fixtureEnv(clientEnv), { timeoutMs: PUSH_TIMEOUT_MS }));
        const got = await refLines(['ls-remote', url], clientEnv);
        if (JSON.stringify(got) !== JSON.stringify(expected)) throw new Error(`push --mirror to ${target.name} (${url}): refs differ from the fixture`);
        if (repoId) await waitConverged(cluster, repoId);
        if (i > 0) target.times.push(ms / 1000);
        log(`full push  ${i === 0 ? 'warm-up ' : `run ${i}/${runs}`}  ${target.name.padEnd(34)} ${fmtS(ms)} s`);
      }
    }
    const direct = pair(directTarget.times, httpTarget.times);
    const fsynced = pair(spreadTarget.times, fsyncTarget.times);
    return {
      result: {
        nodes: size,
        ...pair(spreadTarget.times, httpTarget.times),
        coordinator_s: direct.node_s,
        coordinator_median_s: direct.node_median_s,
        coordinator_ratio: direct.ratio,
        fsync_http_backend_s: fsynced.http_backend_s,
        fsync_http_backend_median_s: fsynced.http_backend_median_s,
        fsync_ratio: fsynced.ratio,
      },
      ...pushed,
    };
  };

  const cluster3 = await startCluster({ size: 3, env: { ...serverEnv, ...(settings.breakdown ? { LOG_LEVEL: 'info' } : {}), ...settings.nodeEnv } });
  log(`3-node cluster: ${cluster3.urls.join(' ')}; http-backend: ${backend.url}`);
  const full3 = await fullPush(cluster3);

  // ---- b. one-commit fast-forward push on top of the fixture --------------------------------------
  // Each target is its own repo holding the fixture (from a.); each run makes one commit (untimed) and
  // pushes it to every target, in rotating order.
  const wc = path.join(work, 'wc-small');
  await git(['clone', '-q', fixtureDir, wc], clientEnv);
  const spreadRepo = full3.spread[full3.spread.length - 1]!;
  const direct = full3.direct[full3.direct.length - 1]!;
  const smallTargets: Array<Target & { url: (run: number) => string; repoId?: string }> = [
    { name: 'node, round-robin', key: 'spread', times: [], url: (i) => `${cluster3.urls[i % cluster3.urls.length]}/${spreadRepo.repoId}.git`, repoId: spreadRepo.repoId },
    { name: `node, coordinator ${cluster3.nodes[direct.coordinator]!.serverId}`, key: 'direct', times: [], url: () => direct.url, repoId: direct.repoId },
    { name: 'nginx+git-http-backend', key: 'http', times: [], url: () => full3.http[full3.http.length - 1]! },
    // Beside the headline: the same server with its refs packed, as every node's housekeeping packs a
    // repo's many loose refs (lib/git/maintenance.ts) and http-backend's repos (no gc --auto finds work
    // after one push) keep them loose: how much of the gap is that housekeeping.
    { name: 'http-backend, refs packed', key: 'http-packed', times: [], url: () => packedHttp },
  ];
  const packedHttp = full3.http[full3.http.length - 2]!;
  await git(['pack-refs', '--all'], { ...serverGitEnv, GIT_DIR: path.join(projectRoot, packedHttp.slice(backend.url.length + 1)) });
  const notes = path.join(wc, 'bench-notes.txt');
  for (let i = 0; i <= smallRuns; i += 1) {
    await fs.appendFile(notes, `small push ${i}\n`);
    await git(['add', 'bench-notes.txt'], clientEnv, { cwd: wc });
    await git(['commit', '-q', '-m', `small push ${i}`], clientEnv, { cwd: wc });
    const head = (await git(['rev-parse', 'HEAD'], clientEnv, { cwd: wc })).stdout.trim();
    const order = smallTargets.map((_, k) => smallTargets[(k + i) % smallTargets.length]!);
    for (const target of order) {
      const { ms } = await timed(() => git(['push', '--quiet', target.url(i), 'HEAD:refs/heads/main'], clientEnv, { cwd: wc, timeoutMs: PUSH_TIMEOUT_MS }));
      if (i > 0) target.times.push(ms / 1000);
      if (target.repoId) await waitConverged(cluster3, target.repoId);
      log(`small push ${i === 0 ? 'warm-up ' : `run ${i}/${smallRuns}`}  ${target.name.padEnd(30)} ${fmtS(ms)} s`);
    }
    for (const target of smallTargets) {
      const remote = (await git(['ls-remote', target.url(i), 'refs/heads/main'], clientEnv)).stdout.split('\t')[0];
      if (remote !== head) throw new Error(`small push to ${target.name}: main is ${remote}, expected ${head}`);
    }
  }
  const smallOf = (key: string): number[] => smallTargets.find((t) => t.key === key)!.times;
  const smallDirect = pair(smallOf('direct'), smallOf('http'));
  const smallPacked = pair(smallOf('spread'), smallOf('http-packed'));
  const small = {
    ...pair(smallOf('spread'), smallOf('http')),
    coordinator_s: smallDirect.node_s,
    coordinator_median_s: smallDirect.node_median_s,
    coordinator_ratio: smallDirect.ratio,
    packed_http_backend_s: smallPacked.http_backend_s,
    packed_http_backend_median_s: smallPacked.http_backend_median_s,
    packed_ratio: smallPacked.ratio,
  };

  // ---- c. many new branches in one push -----------------------------------------------------------
  // Into the first repos of a. (the fixture, untouched by b.); each run's branches have new names and
  // point at commits of the fixture, so the push carries refs and next to no objects.
  let bulk: (PairResult & { branches: number }) | undefined;
  if (settings.bulkBranches > 0) {
    const count = settings.bulkBranches;
    const oids = (await git(['rev-list', '--max-count=1000', 'refs/heads/main'], fixtureEnv(clientEnv))).stdout.trim().split('\n');
    const bulkRepo = full3.spread[0]!;
    const bulkTargets: Array<Target & { url: (run: number) => string; repoId?: string }> = [
      { name: 'node, round-robin', key: 'spread', times: [], url: (i) => `${cluster3.urls[i % cluster3.urls.length]}/${bulkRepo.repoId}.git`, repoId: bulkRepo.repoId },
      { name: 'nginx+git-http-backend', key: 'http', times: [], url: () => full3.http[0]! },
    ];
    for (let i = 0; i <= runs; i += 1) {
      const lines = Array.from({ length: count }, (_, k) => `create refs/heads/bulk-${i}/b${String(k).padStart(5, '0')} ${oids[k % oids.length]}`);
      await run('git', ['update-ref', '--stdin'], { env: clientEnv, cwd: wc, input: `${lines.join('\n')}\n`, timeoutMs: PUSH_TIMEOUT_MS });
      const order = i % 2 === 0 ? bulkTargets : [...bulkTargets].reverse();
      for (const target of order) {
        const url = target.url(i);
        const { ms } = await timed(() => git(['push', '--quiet', url, `refs/heads/bulk-${i}/*:refs/heads/bulk-${i}/*`], clientEnv, { cwd: wc, timeoutMs: PUSH_TIMEOUT_MS }));
        if (target.repoId) await waitConverged(cluster3, target.repoId, 120_000);
        const listed = (await git(['ls-remote', '--heads', url, `refs/heads/bulk-${i}/*`], clientEnv)).stdout.split('\n').filter(Boolean).length;
        if (listed !== count) throw new Error(`push of ${count} branches to ${target.name}: ${listed} listed`);
        if (i > 0) target.times.push(ms / 1000);
        log(`${count} branches ${i === 0 ? 'warm-up ' : `run ${i}/${runs}`}  ${target.name.padEnd(30)} ${fmtS(ms)} s`);
      }
    }
    bulk = { ...pair(bulkTargets[0]!.times, bulkTargets[1]!.times), branches: count };
  }

  // ---- d. concurrent clients, each pushing to and cloning its own repo ----------------------------
  // The same load against http-backend is the baseline: what this machine does without replication.
  const concurrent = async (kind: 'node' | 'http', clients: number): Promise<ConcurrentResult> => {
    const actors = await Promise.all(
      Array.from({ length: clients }, async (_, k) => {
        let url: string;
        let repoId: string | undefined;
        let proxied = false;
        if (kind === 'node') {
          const repo = await newNodeRepo(cluster3, `bench/conc${clients}`);
          repoId = repo.repoId;
          const nodeIndex = k % cluster3.nodes.length;
          url = `${cluster3.urls[nodeIndex]}/${repoId}.git`;
          proxied = nodeIndex !== repo.coordinator;
        } else {
          url = await newHttpRepo();
        }
        const dir = path.join(work, `wc-conc${clients}-${kind}-${k}`);
        await git(['init', '-q', '-b', 'main', dir], clientEnv);
        await fs.writeFile(path.join(dir, 'README'), `client ${k}\n`);
        await git(['add', 'README'], clientEnv, { cwd: dir });
        await git(['commit', '-q', '-m', 'base'], clientEnv, { cwd: dir });
        return { k, repoId, url, dir, proxied, commits: [] as string[], pushMs: [] as number[], cloneMs: [] as number[], errors: [] as string[] };
      }),
    );
    // Sequential set-up: base pushes, then each client's chain of commits.
    for (const p of actors) {
      await git(['push', '-q', p.url, 'main:refs/heads/main'], clientEnv, { cwd: p.dir });
      for (let j = 0; j < pushes; j += 1) {
        await fs.appendFile(path.join(p.dir, 'README'), `push ${j}\n`);
        await git(['commit', '-q', '-a', '-m', `push ${j}`], clientEnv, { cwd: p.dir });
        p.commits.push((await git(['rev-parse', 'HEAD'], clientEnv, { cwd: p.dir })).stdout.trim());
      }
      if (p.repoId) await waitConverged(cluster3, p.repoId);
    }
    if (kind === 'node') for (const n of cluster3.nodes) resetPeakRss(n.pid);
    const answeredBefore = kind === 'node' ? await errorAnswers(cluster3.urls) : new Map<string, number>();
    const started = nowMs();
    await Promise.all(
      actors.map(async (p) => {
        for (const [j, sha] of p.commits.entries()) {
          let t0 = nowMs();
          const pushed = await run('git', ['push', '--quiet', p.url, `${sha}:refs/heads/main`], { env: clientEnv, cwd: p.dir, timeoutMs: PUSH_TIMEOUT_MS, allowFail: true });
          if (pushed.code === 0) p.pushMs.push(nowMs() - t0);
          else p.errors.push(`push: ${gitFailure(pushed.stderr)}`);
          const dest = path.join(work, `clone-conc${clients}-${kind}-${p.k}-${j}`);
          t0 = nowMs();
          const cloned = await run('git', ['clone', '--bare', '--quiet', p.url, dest], { env: clientEnv, timeoutMs: PUSH_TIMEOUT_MS, allowFail: true });
          if (cloned.code === 0) p.cloneMs.push(nowMs() - t0);
          else p.errors.push(`clone: ${gitFailure(cloned.stderr)}`);
          await fs.rm(dest, { recursive: true, force: true });
        }
      }),
    );
    const ms = nowMs() - started;
    const peakRss = kind === 'node' ? cluster3.nodes.map((n) => peakRssKiB(n.pid)) : [];
    const answeredAfter = kind === 'node' ? await errorAnswers(cluster3.urls) : new Map<string, number>();
    const errorCodes = Object.fromEntries([...answeredAfter].map(([code, n]) => [code, n - (answeredBefore.get(code) ?? 0)]).filter(([, n]) => (n as number) > 0));
    const pushLatencies = actors.flatMap((p) => p.pushMs);
    const cloneLatencies = actors.flatMap((p) => p.cloneMs);
    const latencies = [...pushLatencies, ...cloneLatencies];
    const errors = actors.flatMap((p) => p.errors);
    for (const p of actors) {
      const lastOk = p.errors.length === 0 ? p.commits[p.commits.length - 1] : undefined;
      if (p.repoId) await waitConverged(cluster3, p.repoId);
      const remote = (await git(['ls-remote', p.url, 'refs/heads/main'], clientEnv)).stdout.split('\t')[0];
      if (lastOk !== undefined && remote !== lastOk) throw new Error(`client ${p.k} (${kind}): main is ${remote}, expected ${lastOk}`);
    }
    if (errors.length > 0) log(`${clients} concurrent clients (${kind}): ${errors.length} failed, e.g. ${errors[0]}`);
    const result: ConcurrentResult = {
      clients,
      ops_each: pushes * 2,
      ok: latencies.length,
      errors: errors.length,
      error_samples: errors.slice(0, 3),
      proxied_clients: actors.filter((p) => p.proxied).length,
      seconds: round(ms / 1000),
      ops_per_s: round(latencies.length / (ms / 1000), 1),
      p50_ms: round(percentile(latencies, 50), 1),
      p99_ms: round(percentile(latencies, 99), 1),
      max_ms: round(latencies.length ? Math.max(...latencies) : NaN, 1),
      push_p99_ms: round(percentile(pushLatencies, 99), 1),
      clone_p99_ms: round(percentile(cloneLatencies, 99), 1),
      peak_rss_kib: peakRss,
      error_codes: errorCodes,
    };
    log(`${clients} concurrent clients (${kind}): ${result.ok} operations in ${result.seconds} s, ${result.ops_per_s}/s`);
    return result;
  };
  const conc: Array<{ node: ConcurrentResult; http_backend: ConcurrentResult }> = [];
  for (const clients of settings.concurrencies) {
    const node = await concurrent('node', clients);
    conc.push({ node, http_backend: await concurrent('http', clients) });
  }
  await cluster3.stop();
  const breakdown = settings.breakdown ? await pushBreakdown(cluster3.root, direct.repoId) : undefined;

  // ---- a, again with 2 nodes ----------------------------------------------------------------------
  let full2: Awaited<ReturnType<typeof fullPush>> | undefined;
  if (settings.twoNodes) {
    const cluster2 = await startCluster({ size: 2, env: { ...serverEnv, ...settings.nodeEnv } });
    log(`2-node cluster: ${cluster2.urls.join(' ')}`);
    full2 = await fullPush(cluster2);
    await cluster2.stop();
  }
  await backend.stop();

  // ---- report ----------------------------------------------------------------------------------------
  const mark = (ratio: number, target: number): string => (ratio <= target ? `ok (<= ${target}x)` : `MISSED (> ${target}x)`);
  const packMb = (fixture.sizePackKiB * 1024) / 1e6;
  const row = (name: string, count: number, node: number, http: number, target?: number): Array<string | number> => [
    name,
    count,
    node.toFixed(3),
    http.toFixed(3),
    `${(node / http).toFixed(3)}x`,
    target === undefined ? '(info)' : mark(node / http, target),
  ];
  const rows: Array<Array<string | number>> = [];
  for (const full of [full3, full2]) {
    if (!full) continue;
    const r = full.result;
    rows.push(row(`a. full push, ${r.nodes} nodes, round-robin`, runs, r.node_median_s, r.http_backend_median_s, PUSH_TARGETS.full));
    rows.push(row(`a. full push, ${r.nodes} nodes, coordinator`, runs, r.coordinator_median_s, r.http_backend_median_s));
    rows.push(row(`a. full push, ${r.nodes} nodes, round-robin, vs http-backend fsyncing refs`, runs, r.node_median_s, r.fsync_http_backend_median_s));
  }
  rows.push(row('b. 1-commit push, round-robin', smallRuns, small.node_median_s, small.http_backend_median_s, PUSH_TARGETS.small));
  rows.push(row('b. 1-commit push, coordinator', smallRuns, small.coordinator_median_s, small.http_backend_median_s));
  rows.push(row('b. 1-commit push, round-robin, vs http-backend with refs packed', smallRuns, small.node_median_s, small.packed_http_backend_median_s));
  if (bulk) rows.push(row(`c. ${bulk.branches} new branches, round-robin`, runs, bulk.node_median_s, bulk.http_backend_median_s, PUSH_TARGETS.bulk));
  let report =
    '\n' +
    table(['push', 'runs', 'node median s', 'http-backend median s', 'ratio', 'target'], rows) +
    '\n\n' +
    table(
      ['d. concurrent clients, own repos', 'ops', 'errors', 'seconds', 'ops/s', 'p50 ms', 'p99 ms', 'max ms', 'peak RSS MiB per node'],
      conc.flatMap(({ node, http_backend }) =>
        [node, http_backend].map((c, i) => [
          `${i === 0 ? 'quorum-git 3 nodes' : 'http-backend'}: ${c.clients} x ${c.ops_each}`,
          c.ok,
          c.errors,
          c.seconds.toFixed(2),
          c.ops_per_s.toFixed(1),
          c.p50_ms.toFixed(1),
          c.p99_ms.toFixed(1),
          c.max_ms.toFixed(1),
          c.peak_rss_kib.map((k) => (k / 1024).toFixed(0)).join(' ') || '-',
        ]),
      ),
    ) +
    `\n\nfixture: ${fixture.commits} commits, ${fixture.refs} refs, ${packMb.toFixed(1)} MB pack; each concurrent client pushes one commit, then clones its repo, ` +
    `${pushes} times; load average (1 min) ${loadBefore.toFixed(2)} before, ${os.loadavg()[0]!.toFixed(2)} after\n`;
  if (breakdown) {
    report +=
      `\nb. where a one-commit push to the coordinator spends its time (node logs, medians of ${breakdown.pushes} pushes, ms):\n` +
      table(
        ['phase', 'median ms'],
        breakdown.phases.map((p) => [p.name, p.median_ms.toFixed(1)]),
      ) +
      '\n';
  }
  return {
    report,
    json: {
      bench: 'push',
      load_1min: { before: round(loadBefore, 2), after: round(os.loadavg()[0]!, 2) },
      runs,
      small_runs: smallRuns,
      commits: fixture.commits,
      refs: fixture.refs,
      pack_mb: round(packMb, 2),
      full_push_3: full3.result,
      ...(full2 ? { full_push_2: full2.result } : {}),
      small_push: small,
      ...(bulk ? { bulk_branches: bulk } : {}),
      concurrent: conc,
      ...(breakdown ? { small_push_breakdown: breakdown } : {}),
    },
  };
}

/** The issue's targets, node / http-backend medians. */
export const PUSH_TARGETS = { full: 1.2, small: 1.25, bulk: 2 } as const;

async function main(): Promise<void> {
  const concurrencies = (process.env.CONCURRENCY ?? '8').split(',').map((c) => {
    if (!/^\d+$/.test(c) || Number(c) < 1) throw new Error(`CONCURRENCY must be a number or a list of numbers, got '${process.env.CONCURRENCY}'`);
    return Number(c);
  });
  const { report, json } = await benchPush({
    runs: envInt('RUNS', 3),
    smallRuns: envInt('SMALL_RUNS', 20),
    pushes: envInt('PUSHES', 10),
    concurrencies,
    bulkBranches: envInt('BULK_BRANCHES', 5000, 0),
    twoNodes: true,
    breakdown: process.env.BREAKDOWN === '1',
    fixture: await benchFixture(),
  });
  process.stdout.write(report + JSON.stringify(json) + '\n');
}

interface LogLine {
  t: number;
  message?: string;
  path?: string;
  ms?: number;
  request_id?: string;
  txn_id?: string;
  server_id?: string;
  op?: string;
  repo_id?: string;
  refs?: number;
}

/**
 * Takes the one-commit pushes to `repoId` apart, from the nodes' info-level request and txn logs
 * (timestamps have 1 ms resolution): the coordinator's receive-pack request, its pre-receive hook
 * request (which carries the request id the peers' internal requests log too), and the txn steps.
 */
async function pushBreakdown(root: string, repoId: string): Promise<{ pushes: number; phases: Array<{ name: string; median_ms: number }> }> {
  const lines: LogLine[] = [];
  for (const file of (await fs.readdir(root)).filter((f) => /^node-\d+\.log$/.test(f))) {
    for (const raw of (await fs.readFile(path.join(root, file), 'utf8')).split('\n')) {
      if (!raw.startsWith('{')) continue;
      try {
        const d = JSON.parse(raw) as LogLine & { timestamp?: string };
        if (d.timestamp) lines.push({ ...d, t: Date.parse(d.timestamp) });
      } catch {
        // not a log line
      }
    }
  }
  lines.sort((a, b) => a.t - b.t);
  const phases: Record<string, number[]> = {};
  const add = (name: string, value: number): void => {
    (phases[name] ??= []).push(value);
  };
  let pushes = 0;
  for (const started of lines.filter((l) => l.message === 'txn started' && l.op === 'push' && l.repo_id === repoId)) {
    const txn = lines.filter((l) => l.txn_id === started.txn_id);
    const committed = txn.find((l) => l.message === 'push committed');
    const decided = txn.find((l) => l.message === 'txn decided');
    if (!committed || !decided || committed.refs !== 1) continue;
    const same = lines.filter((l) => l.request_id === started.request_id);
    const hook = same.find((l) => l.path === '/internal/hooks/pre-receive' && l.server_id === started.server_id);
    const rp = lines.find((l) => l.server_id === started.server_id && l.path === `/${repoId}.git/git-receive-pack` && hook !== undefined && l.t >= hook.t);
    if (!hook || !rp || hook.ms === undefined || rp.ms === undefined) continue;
    const puts = same.filter((l) => l.path?.startsWith('/internal/push/'));
    const commits = same.filter((l) => l.path === '/internal/txn/commit');
    const hookStart = hook.t - hook.ms;
    const lastPut = puts.length > 0 ? Math.max(...puts.map((l) => l.t)) : started.t;
    pushes += 1;
    add('receive-pack request, total', rp.ms);
    add('  receive-pack until the hook reaches the node (index-pack, connectivity, bash hook start)', hookStart - (rp.t - rp.ms));
    add('  hook request in the node, total', hook.ms);
    add('    read refs/HEAD/quarantine before the txn', started.t - hookStart);
    add('    ship pack files to the peers (.idx then .pack, per peer)', lastPut - started.t);
    add('    prepare on peers until the decision is logged', decided.t - lastPut);
    add('    commit: decision to first peer ack', commits.length > 0 ? Math.min(...commits.map((l) => l.t)) - decided.t : NaN);
    add('    commit: decision to reply (a quorum applied)', committed.t - decided.t);
    add('  after the hook: receive-pack moves the ref and exits', rp.t - hook.t);
    for (const c of commits) add('peer: /internal/txn/commit request', c.ms ?? NaN);
    for (const p of same.filter((l) => l.path === '/internal/txn/prepare')) add('peer: /internal/txn/prepare request', p.ms ?? NaN);
  }
  const infoRefs = lines.filter((l) => l.path === `/${repoId}.git/info/refs` && l.ms !== undefined).map((l) => l.ms!);
  return {
    pushes,
    phases: [
      ...Object.entries(phases).map(([name, values]) => ({ name, median_ms: round(median(values.filter((v) => !Number.isNaN(v))), 1) })),
      { name: 'info/refs request (any node; pushes and ls-remote checks)', median_ms: round(median(infoRefs), 1) },
    ],
  };
}

if (isMain(import.meta.url)) runMain('bench-push', main, envInt('BENCH_DEADLINE_S', 1800) * 1000);
