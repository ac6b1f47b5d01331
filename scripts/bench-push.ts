import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pickCoordinator } from '../lib/core/routing.js';
import {
  createRepo,
  envInt,
  git,
  gitClientEnv,
  makeTempDir,
  median,
  nowMs,
  percentile,
  round,
  run,
  runMain,
  startCluster,
  startHttpBackend,
  table,
  timed,
  waitConverged,
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
// b. one-commit fast-forward push on top of the pushed fixture: the coordinating node (and, for
//    information, another node that proxies the push to it) vs http-backend; SMALL_RUNS (default 20: a one-commit push takes
//    tens of milliseconds, and on a shared 2-core machine a median of 10 moved by a tenth between runs).
// c. CONCURRENCY (default 8) pushers, each to its own repo on the 3-node cluster (round-robin over the
//    nodes, as clients behind a load balancer would), each PUSHES (default 10) one-commit pushes in a
//    loop: pushes/s overall, p50/p99 latency. Commits are made before the clock starts. The same load
//    against http-backend is reported alongside, for scale (all processes share this machine's cores).
// Settings (env): RUNS, SMALL_RUNS, PUSHES, CONCURRENCY, FIXTURE, BENCH_DEADLINE_S; BREAKDOWN=1 runs the
// 3-node cluster at LOG_LEVEL=info and prints where the one-commit pushes spend their time, taken from
// the nodes' request and txn logs (info logging costs a little, so it is off by default).
// Prints a table and a final JSON line. Pushes go to the repo's coordinator (rendezvous hashing over
// the live nodes, lib/core/routing.ts) unless said otherwise: a push that arrives elsewhere is proxied there.

const PUSH_TIMEOUT_MS = 600_000;

interface Target {
  name: string;
  key: string;
  times: number[];
}

interface ConcurrentResult {
  pushers: number;
  pushes_each: number;
  ok: number;
  errors: number;
  proxied_pushers: number;
  seconds: number;
  pushes_per_s: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

interface FullPushResult {
  nodes: number;
  node_median_s: number;
  http_backend_median_s: number;
  ratio: number;
  node_s: number[];
  http_backend_s: number[];
}

function fmtS(ms: number): string {
  return (ms / 1000).toFixed(3);
}

async function main(): Promise<void> {
  // Other work on the machine skews every figure: the 1-minute load average is reported with them.
  const loadBefore = os.loadavg()[0]!;
  const runs = envInt('RUNS', 3);
  const smallRuns = envInt('SMALL_RUNS', 20);
  const pushes = envInt('PUSHES', 10);
  const concurrency = envInt('CONCURRENCY', 8);
  const { dir: fixtureDir, fixture } = await benchFixture();
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
  const newHttpRepo = async (): Promise<string> => {
    httpRepos += 1;
    const name = `bench/push-${httpRepos}.git`;
    const dir = path.join(projectRoot, name);
    await git(['init', '--bare', '-q', dir], serverGitEnv);
    await git(['config', 'http.receivepack', 'true'], { ...serverGitEnv, GIT_DIR: dir });
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

  // ---- a. full push of the fixture ----------------------------------------------------------------
  const fullPush = async (cluster: Cluster): Promise<{ result: FullPushResult; nodeRepos: Array<{ repoId: string; url: string; coordinator: number }>; lastHttp: string }> => {
    const size = cluster.nodes.length;
    const node: Target = { name: `quorum-git ${size} nodes`, key: 'node', times: [] };
    const http: Target = { name: 'nginx+git-http-backend', key: 'http', times: [] };
    const pushedRepos: Array<{ repoId: string; url: string; coordinator: number }> = [];
    let lastHttp = '';
    for (let i = 0; i <= runs; i += 1) {
      const order = i % 2 === 0 ? [node, http] : [http, node];
      for (const target of order) {
        let url: string;
        let repoId = '';
        if (target === node) {
          const repo = await newNodeRepo(cluster);
          repoId = repo.repoId;
          url = `${cluster.urls[repo.coordinator]}/${repo.repoId}.git`;
          pushedRepos.push({ repoId, url, coordinator: repo.coordinator });
        } else {
          url = await newHttpRepo();
          lastHttp = url;
        }
        const { ms } = await timed(() => git(['push', '--quiet', '--mirror', url], fixtureEnv(clientEnv), { timeoutMs: PUSH_TIMEOUT_MS }));
        const got = await refLines(['ls-remote', url], clientEnv);
        if (JSON.stringify(got) !== JSON.stringify(expected)) throw new Error(`push --mirror to ${target.name} (${url}): refs differ from the fixture`);
        if (repoId) await waitConverged(cluster, repoId);
        if (i > 0) target.times.push(ms / 1000);
        log(`full push  ${i === 0 ? 'warm-up ' : `run ${i}/${runs}`}  ${target.name.padEnd(24)} ${fmtS(ms)} s`);
      }
    }
    const nodeMedian = median(node.times);
    const httpMedian = median(http.times);
    return {
      result: {
        nodes: size,
        node_median_s: round(nodeMedian),
        http_backend_median_s: round(httpMedian),
        ratio: round(nodeMedian / httpMedian),
        node_s: node.times.map((t) => round(t)),
        http_backend_s: http.times.map((t) => round(t)),
      },
      nodeRepos: pushedRepos,
      lastHttp,
    };
  };

  // BREAKDOWN=1: nodes log at info level, and the one-commit pushes are taken apart from their logs.
  const breakdownWanted = process.env.BREAKDOWN === '1';
  const cluster3 = await startCluster({ size: 3, env: { ...serverEnv, ...(breakdownWanted ? { LOG_LEVEL: 'info' } : {}) } });
  log(`3-node cluster: ${cluster3.urls.join(' ')}; http-backend: ${backend.url}`);
  const full3 = await fullPush(cluster3);

  // ---- b. one-commit fast-forward push on top of the fixture --------------------------------------
  // Both servers hold the fixture (the last full-push repos); each run makes one commit (untimed) and
  // pushes it to every target, in rotating order.
  const wc = path.join(work, 'wc-small');
  await git(['clone', '-q', fixtureDir, wc], clientEnv);
  // Each target is its own repo (they all receive the same commit): the last two full-push repos.
  const direct = full3.nodeRepos[full3.nodeRepos.length - 1]!;
  const viaOther = full3.nodeRepos[full3.nodeRepos.length - 2]!;
  const other = (viaOther.coordinator + 1) % cluster3.nodes.length;
  const smallTargets: Array<Target & { url: string; repoId?: string }> = [
    { name: `node (coordinator ${cluster3.nodes[direct.coordinator]!.serverId})`, key: 'node', times: [], url: direct.url, repoId: direct.repoId },
    { name: 'nginx+git-http-backend', key: 'http', times: [], url: full3.lastHttp },
    {
      name: `node via ${cluster3.nodes[other]!.serverId} (proxied)`,
      key: 'node_proxied',
      times: [],
      url: `${cluster3.urls[other]}/${viaOther.repoId}.git`,
      repoId: viaOther.repoId,
    },
  ];
  const notes = path.join(wc, 'bench-notes.txt');
  for (let i = 0; i <= smallRuns; i += 1) {
    await fs.appendFile(notes, `small push ${i}\n`);
    await git(['add', 'bench-notes.txt'], clientEnv, { cwd: wc });
    await git(['commit', '-q', '-m', `small push ${i}`], clientEnv, { cwd: wc });
    const head = (await git(['rev-parse', 'HEAD'], clientEnv, { cwd: wc })).stdout.trim();
    const order = smallTargets.map((_, k) => smallTargets[(k + i) % smallTargets.length]!);
    for (const target of order) {
      const { ms } = await timed(() => git(['push', '--quiet', target.url, 'HEAD:refs/heads/main'], clientEnv, { cwd: wc, timeoutMs: PUSH_TIMEOUT_MS }));
      if (i > 0) target.times.push(ms / 1000);
      if (target.repoId) await waitConverged(cluster3, target.repoId);
      log(`small push ${i === 0 ? 'warm-up ' : `run ${i}/${smallRuns}`}  ${target.name.padEnd(30)} ${fmtS(ms)} s`);
    }
    for (const target of smallTargets) {
      const remote = (await git(['ls-remote', target.url, 'refs/heads/main'], clientEnv)).stdout.split('\t')[0];
      if (remote !== head) throw new Error(`small push to ${target.name}: main is ${remote}, expected ${head}`);
    }
  }

  // ---- c. concurrent pushers, each to its own repo -----------------------------------------------
  // The same load against http-backend too, for scale: what this machine does without replication.
  const concurrent = async (kind: 'node' | 'http'): Promise<ConcurrentResult> => {
    const pushers = await Promise.all(
      Array.from({ length: concurrency }, async (_, k) => {
        let url: string;
        let repoId: string | undefined;
        let proxied = false;
        if (kind === 'node') {
          const repo = await newNodeRepo(cluster3, 'bench/conc');
          repoId = repo.repoId;
          const nodeIndex = k % cluster3.nodes.length;
          url = `${cluster3.urls[nodeIndex]}/${repoId}.git`;
          proxied = nodeIndex !== repo.coordinator;
        } else {
          url = await newHttpRepo();
        }
        const dir = path.join(work, `wc-conc-${kind}-${k}`);
        await git(['init', '-q', '-b', 'main', dir], clientEnv);
        await fs.writeFile(path.join(dir, 'README'), `pusher ${k}\n`);
        await git(['add', 'README'], clientEnv, { cwd: dir });
        await git(['commit', '-q', '-m', 'base'], clientEnv, { cwd: dir });
        return { k, repoId, url, dir, proxied, commits: [] as string[], latencies: [] as number[], errors: [] as string[] };
      }),
    );
    // Sequential set-up: base pushes, then each pusher's chain of commits.
    for (const p of pushers) {
      await git(['push', '-q', p.url, 'main:refs/heads/main'], clientEnv, { cwd: p.dir });
      for (let j = 0; j < pushes; j += 1) {
        await fs.appendFile(path.join(p.dir, 'README'), `push ${j}\n`);
        await git(['commit', '-q', '-a', '-m', `push ${j}`], clientEnv, { cwd: p.dir });
        p.commits.push((await git(['rev-parse', 'HEAD'], clientEnv, { cwd: p.dir })).stdout.trim());
      }
      if (p.repoId) await waitConverged(cluster3, p.repoId);
    }
    const started = nowMs();
    await Promise.all(
      pushers.map(async (p) => {
        for (const sha of p.commits) {
          const t0 = nowMs();
          const res = await run('git', ['push', '--quiet', p.url, `${sha}:refs/heads/main`], { env: clientEnv, cwd: p.dir, timeoutMs: PUSH_TIMEOUT_MS, allowFail: true });
          if (res.code === 0) p.latencies.push(nowMs() - t0);
          else p.errors.push(res.stderr.trim().split('\n').slice(-2).join(' | '));
        }
      }),
    );
    const ms = nowMs() - started;
    const latencies = pushers.flatMap((p) => p.latencies);
    const errors = pushers.flatMap((p) => p.errors);
    for (const p of pushers) {
      const lastOk = p.errors.length === 0 ? p.commits[p.commits.length - 1] : undefined;
      if (p.repoId) await waitConverged(cluster3, p.repoId);
      const remote = (await git(['ls-remote', p.url, 'refs/heads/main'], clientEnv)).stdout.split('\t')[0];
      if (lastOk !== undefined && remote !== lastOk) throw new Error(`pusher ${p.k} (${kind}): main is ${remote}, expected ${lastOk}`);
    }
    if (errors.length > 0) log(`concurrent pushes (${kind}): ${errors.length} failed, e.g. ${errors[0]}`);
    const result: ConcurrentResult = {
      pushers: concurrency,
      pushes_each: pushes,
      ok: latencies.length,
      errors: errors.length,
      proxied_pushers: pushers.filter((p) => p.proxied).length,
      seconds: round(ms / 1000),
      pushes_per_s: round(latencies.length / (ms / 1000), 1),
      p50_ms: round(percentile(latencies, 50), 1),
      p99_ms: round(percentile(latencies, 99), 1),
      max_ms: round(latencies.length ? Math.max(...latencies) : NaN, 1),
    };
    log(`concurrent (${kind}): ${result.ok} pushes in ${result.seconds} s, ${result.pushes_per_s}/s`);
    return result;
  };
  const conc = await concurrent('node');
  const concHttp = await concurrent('http');
  await cluster3.stop();
  const breakdown = breakdownWanted ? await pushBreakdown(cluster3.root, direct.repoId) : undefined;

  // ---- a, again with 2 nodes ----------------------------------------------------------------------
  const cluster2 = await startCluster({ size: 2, env: serverEnv });
  log(`2-node cluster: ${cluster2.urls.join(' ')}`);
  const full2 = await fullPush(cluster2);
  await cluster2.stop();
  await backend.stop();

  // ---- report ----------------------------------------------------------------------------------------
  const small = Object.fromEntries(smallTargets.map((t) => [t.key, t.times]));
  const smallMedian = (key: string): number => median(small[key]!);
  const smallRatio = smallMedian('node') / smallMedian('http');
  const smallProxiedRatio = smallMedian('node_proxied') / smallMedian('http');
  const mark = (ratio: number, target: number): string => (ratio <= target ? `ok (<= ${target}x)` : `MISSED (> ${target}x)`);
  const packMb = (fixture.sizePackKiB * 1024) / 1e6;
  const rows: Array<Array<string | number>> = [
    ['a. full push, 3 nodes', runs, full3.result.node_median_s.toFixed(3), full3.result.http_backend_median_s.toFixed(3), `${full3.result.ratio.toFixed(3)}x`, mark(full3.result.ratio, 1.3)],
    ['a. full push, 2 nodes', runs, full2.result.node_median_s.toFixed(3), full2.result.http_backend_median_s.toFixed(3), `${full2.result.ratio.toFixed(3)}x`, mark(full2.result.ratio, 1.3)],
    ['b. 1-commit push, coordinator', smallRuns, fmtS(smallMedian('node') * 1000), fmtS(smallMedian('http') * 1000), `${smallRatio.toFixed(3)}x`, mark(smallRatio, 1.5)],
    ['b. 1-commit push, via other node', smallRuns, fmtS(smallMedian('node_proxied') * 1000), fmtS(smallMedian('http') * 1000), `${smallProxiedRatio.toFixed(3)}x`, '(info)'],
  ];
  process.stdout.write(
    '\n' +
      table(['push', 'runs', 'node median s', 'http-backend median s', 'ratio', 'target'], rows) +
      '\n\n' +
      table(
        ['c. concurrent pushers, own repos', 'pushes', 'errors', 'seconds', 'pushes/s', 'p50 ms', 'p99 ms', 'max ms'],
        [conc, concHttp].map((c, i) => [
          `${i === 0 ? 'quorum-git 3 nodes' : 'http-backend (info)'}: ${concurrency} x ${pushes}`,
          c.ok,
          c.errors,
          c.seconds.toFixed(2),
          c.pushes_per_s.toFixed(1),
          c.p50_ms.toFixed(1),
          c.p99_ms.toFixed(1),
          c.max_ms.toFixed(1),
        ]),
      ) +
      `\n\nfixture: ${fixture.commits} commits, ${fixture.refs} refs, ${packMb.toFixed(1)} MB pack; ${conc.proxied_pushers} of ${concurrency} concurrent pushers ` +
      `reach their repo through a node that proxies to its coordinator; load average (1 min) ${loadBefore.toFixed(2)} before, ${os.loadavg()[0]!.toFixed(2)} after\n`,
  );
  if (breakdown) {
    process.stdout.write(
      `\nb. where a one-commit push to the coordinator spends its time (node logs, medians of ${breakdown.pushes} pushes, ms):\n` +
        table(
          ['phase', 'median ms'],
          breakdown.phases.map((p) => [p.name, p.median_ms.toFixed(1)]),
        ) +
        '\n',
    );
  }
  process.stdout.write(
    JSON.stringify({
      bench: 'push',
      load_1min: { before: round(loadBefore, 2), after: round(os.loadavg()[0]!, 2) },
      runs,
      small_runs: smallRuns,
      commits: fixture.commits,
      refs: fixture.refs,
      pack_mb: round(packMb, 2),
      full_push_3: full3.result,
      full_push_2: full2.result,
      small_push: {
        node_median_s: round(smallMedian('node')),
        http_backend_median_s: round(smallMedian('http')),
        ratio: round(smallRatio),
        node_proxied_median_s: round(smallMedian('node_proxied')),
        proxied_ratio: round(smallProxiedRatio),
        node_s: small.node!.map((t) => round(t)),
        http_backend_s: small.http!.map((t) => round(t)),
        node_proxied_s: small.node_proxied!.map((t) => round(t)),
      },
      concurrent: conc,
      concurrent_http_backend: concHttp,
      ...(breakdown ? { small_push_breakdown: breakdown } : {}),
    }) + '\n',
  );
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

runMain('bench-push', main, envInt('BENCH_DEADLINE_S', 1800) * 1000);
