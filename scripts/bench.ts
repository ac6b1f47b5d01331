import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GIT_FSYNC } from '../lib/git/hooks.js';
import { benchClone } from './bench-clone.js';
import { benchCreate } from './bench-create.js';
import { benchProtocol, type VariantSummary } from './bench-protocol.js';
import { PROXY_CLONE_TARGET, benchProxyClone } from './bench-proxy-clone.js';
import { PUSH_TARGETS, benchPush, type ConcurrentResult } from './bench-push.js';
import { HEALTH_MAX_TARGET_MS, benchSlowClients } from './bench-slow-clients.js';
import { PROJECT_ROOT, benchFixture, findBinary, git, log, median, percentile, round, run, runMain, stopRunningClusters, table, type BenchFixture } from './bench-support.js';
import { DEFAULT_FIXTURE, defaultParams } from './gen-fixture.js';

// `npm run bench`: every benchmark of issue 9 in one run, printed as one table and written to
// BENCHMARKS.md with the machine it ran on. It installs nginx + fcgiwrap when they are missing
// (scripts/bench-setup.sh) and builds the fixture (scripts/gen-fixture.ts). Each section is one of the
// bench:* scripts' functions (baseline and quorum-git alternating within it); the nodes log at their
// default level and clients are spread round-robin over the nodes, as users meet them. A row that misses
// its target is printed as a miss; a section that fails still prints its rows, as failures.
//
// --quick: every section shrunk (a small fixture, one or two runs, few clients) to check that it all
// works in a couple of minutes; its figures mean nothing and it writes .bench/BENCHMARKS-quick.md.
// --out FILE: where to write the report (default BENCHMARKS.md, or the quick one).

/** The nodes' default log level (lib/base/logger.ts): the figures are what a default node does. */
const NODE_ENV = { LOG_LEVEL: 'info' };

interface Row {
  name: string;
  /** What the two figures are (e.g. "median s"). */
  unit: string;
  baseline?: number;
  quorum?: number;
  ratio?: number;
  baselineP99?: number;
  quorumP99?: number;
  target: string;
  /** undefined: no target (for information). */
  met?: boolean;
  notes: string;
}

interface Size {
  fixture: { dir: string; commits: number; branches: number; tags: number };
  cloneRuns: number;
  pushRuns: number;
  smallRuns: number;
  bulkBranches: number;
  concurrencies: number[];
  opsEach: number;
  refs: number;
  protocolRuns: number;
  creates: number;
  createClients: number;
  slowClients: number;
  probeS: number;
}

const FULL: Size = {
  fixture: { dir: DEFAULT_FIXTURE, commits: 10_000, branches: 300, tags: 200 },
  cloneRuns: 5,
  pushRuns: 3,
  smallRuns: 20,
  bulkBranches: 5000,
  concurrencies: [8, 32],
  opsEach: 5,
  refs: 10_000,
  protocolRuns: 5,
  creates: 400,
  createClients: 8,
  slowClients: 300,
  probeS: 20,
};

const QUICK: Size = {
  fixture: { dir: '.bench/fixture-quick.git', commits: 300, branches: 30, tags: 20 },
  cloneRuns: 1,
  pushRuns: 1,
  smallRuns: 2,
  bulkBranches: 200,
  concurrencies: [2, 4],
  opsEach: 1,
  refs: 500,
  protocolRuns: 1,
  creates: 24,
  createClients: 4,
  slowClients: 50,
  probeS: 3,
};


/** A row comparing two sets of timings, the target a ratio quorum-git / baseline. */
function ratioRow(name: string, unit: string, baseline: number[], quorum: number[], target: number | undefined, notes: string): Row {
  const b = median(baseline);
  const q = median(quorum);
  return {
    name,
    unit,
    baseline: b,
    quorum: q,
    ratio: q / b,
    baselineP99: percentile(baseline, 99),
    quorumP99: percentile(quorum, 99),
    target: target === undefined ? '-' : `<= ${target}x`,
    met: target === undefined ? undefined : q / b <= target,
    notes,
  };
}

async function ensureSetup(): Promise<void> {
  try {
    findBinary('nginx');
    findBinary('fcgiwrap');
  } catch {
    log('nginx or fcgiwrap is missing: running scripts/bench-setup.sh');
    const setup = await run('bash', [path.join(PROJECT_ROOT, 'scripts', 'bench-setup.sh')], { timeoutMs: 600_000, allowFail: true });
    process.stderr.write(setup.stdout + setup.stderr);
    if (setup.code !== 0) throw new Error('scripts/bench-setup.sh failed: the http-backend baseline cannot run');
  }
}

async function machine(): Promise<Record<string, string>> {
  const cpus = os.cpus();
  const gitVersion = (await run('git', ['--version'])).stdout.trim();
  const commit = (await run('git', ['-C', PROJECT_ROOT, 'rev-parse', '--short', 'HEAD'], { allowFail: true })).stdout.trim();
  return {
    cpu: `${cpus[0]?.model ?? 'unknown'}`,
    cores: String(cpus.length),
    ram: `${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB`,
    node: process.version,
    git: gitVersion.replace(/^git version /, ''),
    os: `${os.type()} ${os.release()}`,
    commit: commit || 'unknown',
  };
}

function fmt(value: number | undefined, digits: number): string {
  return value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits);
}

function cells(row: Row): string[] {
  const digits = row.unit.endsWith(' s') ? 3 : 1;
  const status = row.met === undefined ? '' : row.met ? 'ok' : 'MISS';
  return [
    row.name,
    row.unit,
    fmt(row.baseline, digits),
    fmt(row.quorum, digits),
    row.ratio === undefined ? '-' : `${row.ratio.toFixed(3)}x`,
    `${fmt(row.baselineP99, digits)} / ${fmt(row.quorumP99, digits)}`,
    row.target,
    status,
    row.notes,
  ];
}

const HEADER = ['row', 'unit', 'baseline', 'quorum-git', 'ratio', 'p99 baseline / quorum-git', 'target', '', 'notes'];

function concurrentRow(node: ConcurrentResult, http: ConcurrentResult): Row {
  const rss = node.peak_rss_kib.map((k) => `${(k / 1024).toFixed(0)}`).join('/');
  return {
    name: `${node.clients} concurrent clients, push + clone, 3 nodes`,
    unit: 'median ms',
    baseline: http.p50_ms,
    quorum: node.p50_ms,
    ratio: node.p50_ms / http.p50_ms,
    baselineP99: http.p99_ms,
    quorumP99: node.p99_ms,
    target: '0 errors',
    met: node.errors === 0,
    notes:
      `${node.ops_per_s} ops/s vs ${http.ops_per_s}; errors ${node.errors} (baseline ${http.errors}); peak RSS per node ${rss} MiB; ` +
      `p99 push ${node.push_p99_ms} ms, clone ${node.clone_p99_ms} ms${node.error_samples.length ? `; e.g. ${node.error_samples[0]}` : ''}` +
      (Object.keys(node.error_codes).length ? `; the nodes answered ${Object.entries(node.error_codes).map(([code, n]) => `${code} x${n}`).join(', ')}` : ''),
  };
}

function protocolRows(kind: string, summary: Record<string, VariantSummary>, refs: number): Row[] {
  return [0, 2].map((v) => {
    const q = summary[`v${v}`]!;
    const b = summary[`http v${v}`];
    return {
      name: `${kind}, ${refs} refs, protocol v${v}`,
      unit: 'median ms',
      baseline: b?.median_ms,
      quorum: q.median_ms,
      ratio: b ? q.median_ms / b.median_ms : undefined,
      baselineP99: b?.p99_ms,
      quorumP99: q.p99_ms,
      target: '-',
      notes: `KiB down ${(q.down_bytes / 1024).toFixed(1)}${b ? ` (baseline ${(b.down_bytes / 1024).toFixed(1)})` : ''}, up ${(q.up_bytes / 1024).toFixed(1)}`,
    };
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const outArg = args.indexOf('--out');
  for (const [i, a] of args.entries()) if (a !== '--quick' && !(a === '--out' || args[i - 1] === '--out')) throw new Error(`unknown argument '${a}' (use --quick, --out FILE)`);
  const out = path.resolve(PROJECT_ROOT, outArg >= 0 ? (args[outArg + 1] ?? 'BENCHMARKS.md') : quick ? '.bench/BENCHMARKS-quick.md' : 'BENCHMARKS.md');
  const size = quick ? QUICK : FULL;
  const started = Date.now();
  const loadBefore = os.loadavg()[0]!;

  await ensureSetup();
  const fixture: BenchFixture = await benchFixture(size.fixture.dir, { ...defaultParams(), commits: size.fixture.commits, branches: size.fixture.branches, tags: size.fixture.tags });
  const fx = `${fixture.fixture.commits} commits, ${fixture.fixture.refs} refs`;

  const rows: Row[] = [];
  const failures: string[] = [];
  /** Runs one section; if it fails, its rows are still printed, as failures. */
  const section = async (names: string[], fn: () => Promise<Row[]>): Promise<void> => {
    try {
      rows.push(...(await fn()));
    } catch (err) {
      const message = (err as Error).message.split('\n')[0]!.slice(0, 200);
      failures.push(`${names.join(', ')}: ${(err as Error).message}`);
      log(`section failed: ${(err as Error).stack ?? message}`);
      for (const name of names) rows.push({ name, unit: '-', target: '-', met: false, notes: `FAILED: ${message}` });
    } finally {
      await stopRunningClusters();
    }
  };

  await section(['clone vs http-backend, 3 nodes, round-robin'], async () => {
    const r = await benchClone({ runs: size.cloneRuns, fixture, nodeEnv: NODE_ENV });
    return [ratioRow('clone vs http-backend, 3 nodes, round-robin', 'median s', r.json.http_backend_s, r.json.node_s, 1.03, `clone --bare of the fixture (${fx}), ${size.cloneRuns} runs`)];
  });
  await section(['clone through a stale node vs direct, 3 nodes'], async () => {
    const r = await benchProxyClone({ runs: size.cloneRuns, fixture, selfCatchUp: !quick, nodeEnv: NODE_ENV });
    return [ratioRow('clone through a stale node vs direct, 3 nodes', 'median s', r.json.direct_s, r.json.proxied_s, PROXY_CLONE_TARGET, 'baseline: a clone straight from an up-to-date node')];
  });
  const pushNames = [
    'full push vs http-backend, 3 nodes, round-robin',
    'full push vs http-backend, 3 nodes, coordinator',
    'full push vs http-backend fsyncing refs as the nodes do, 3 nodes, round-robin',
    '1-commit push vs http-backend, 3 nodes, round-robin',
    '1-commit push vs http-backend, 3 nodes, coordinator',
    '1-commit push vs http-backend with refs packed, 3 nodes, round-robin',
    `${size.bulkBranches} new branches in one push, 3 nodes, round-robin`,
    ...size.concurrencies.map((c) => `${c} concurrent clients, push + clone, 3 nodes`),
  ];
  await section(pushNames, async () => {
    const r = await benchPush({
      runs: size.pushRuns,
      smallRuns: size.smallRuns,
      pushes: size.opsEach,
      concurrencies: size.concurrencies,
      bulkBranches: size.bulkBranches,
      twoNodes: false,
      breakdown: false,
      fixture,
      nodeEnv: NODE_ENV,
    });
    const { full_push_3: full, small_push: small, bulk_branches: bulk } = r.json;
    const out: Row[] = [
      ratioRow(pushNames[0]!, 'median s', full.http_backend_s, full.node_s, PUSH_TARGETS.full, `push --mirror of the fixture (${fx}) into an empty repo, ${size.pushRuns} runs`),
      ratioRow(pushNames[1]!, 'median s', full.http_backend_s, full.coordinator_s, undefined, 'beside the headline: every push straight to the coordinator'),
      ratioRow(pushNames[2]!, 'median s', full.fsync_http_backend_s, full.node_s, undefined, `beside the headline: the baseline's repos fsync refs (core.fsync=${GIT_FSYNC}), as every node's do; git's default does not`),
      ratioRow(pushNames[3]!, 'median s', small.http_backend_s, small.node_s, PUSH_TARGETS.small, `fast-forward of main by one commit, ${size.smallRuns} runs`),
      ratioRow(pushNames[4]!, 'median s', small.http_backend_s, small.coordinator_s, undefined, 'beside the headline: straight to the coordinator'),
      ratioRow(pushNames[5]!, 'median s', small.packed_http_backend_s, small.node_s, undefined, "beside the headline: the baseline's refs packed (pack-refs --all), as every node's housekeeping packs a repo's many loose refs; after one push http-backend's stay loose"),
    ];
    if (bulk) out.push(ratioRow(pushNames[6]!, 'median s', bulk.http_backend_s, bulk.node_s, PUSH_TARGETS.bulk, 'refs only, onto the fixture'));
    for (const c of r.json.concurrent) out.push(concurrentRow(c.node, c.http_backend));
    return out;
  });
  const protoKinds = ['ls-remote --heads', 'fetch of one branch'];
  await section(
    protoKinds.flatMap((k) => [0, 2].map((v) => `${k}, ${size.refs} refs, protocol v${v}`)),
    async () => {
      const r = await benchProtocol({ runs: size.protocolRuns, refs: size.refs, fixture, baseline: true, partialClones: false, nodeEnv: NODE_ENV });
      return [...protocolRows(protoKinds[0]!, r.json.ls_remote_heads, size.refs), ...protocolRows(protoKinds[1]!, r.json.fetch_main, size.refs)];
    },
  );
  for (const nodes of [3, 5]) {
    const name = `repo creates, ${nodes} nodes`;
    await section([name], async () => {
      const r = await benchCreate({ nodes, concurrency: size.createClients, total: size.creates, convergeS: 15, nodeEnv: NODE_ENV });
      const j = r.json;
      return [
        {
          name,
          unit: 'median ms',
          quorum: median(j.latencies_ms),
          quorumP99: j.p99_ms,
          target: '0 errors',
          met: j.errors === 0,
          notes: `${j.creates_per_s} creates/s, ${size.createClients} clients round-robin, ${j.ok} created, ${j.errors} errors`,
        },
      ];
    });
  }
  const slowName = `/health while ${size.slowClients} slow clients hold upload-pack, 3 nodes`;
  await section([slowName], async () => {
    const r = await benchSlowClients({ clients: size.slowClients, dripMs: 2000, probeS: size.probeS, nodeEnv: NODE_ENV });
    const j = r.json;
    return [
      {
        name: slowName,
        unit: 'median ms',
        quorum: j.median_ms,
        quorumP99: percentile(j.latencies_ms, 99),
        target: `max <= ${HEALTH_MAX_TARGET_MS} ms`,
        met: j.max_ms <= HEALTH_MAX_TARGET_MS && j.failed_probes === 0,
        notes: `max ${j.max_ms} ms over ${j.probes} probes, ${j.failed_probes} failed; slow clients answered ${JSON.stringify(j.answers)}, ${String(j.held)} held`,
      },
    ];
  });

  const info = await machine();
  const minutes = (Date.now() - started) / 60_000;
  const misses = rows.filter((r) => r.met === false);
  const textTable = table(HEADER, rows.map(cells));
  process.stdout.write(`\n${textTable}\n\n${misses.length} of ${rows.length} rows missed their target${quick ? ' (--quick: figures mean nothing)' : ''}\n`);

  const md = (cellsOf: string[]): string => `| ${cellsOf.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;
  const report = [
    `# Benchmarks${quick ? ' (--quick: a smoke run, the figures mean nothing)' : ''}`,
    '',
    `Written by \`npm run bench${quick ? ' -- --quick' : ''}\` (scripts/bench.ts) on ${new Date().toISOString()}, in ${minutes.toFixed(1)} minutes; do not edit by hand.`,
    '',
    `Machine: ${info.cpu}, ${info.cores} cores, ${info.ram} RAM; ${info.os}; node ${info.node}, git ${info.git}; quorum-git ${info.commit}. ` +
      `Load average (1 min) ${loadBefore.toFixed(2)} before, ${os.loadavg()[0]!.toFixed(2)} after.`,
    '',
    `Fixture: ${fx}, ${(fixture.fixture.sizePackKiB / 1024).toFixed(1)} MiB packed (scripts/gen-fixture.ts). Baseline: git http-backend behind nginx + fcgiwrap on the ` +
      'same machine, measured in the same run, alternating with quorum-git. Nodes run at their default log level; clients go round-robin over the nodes unless a row says otherwise.',
    '',
    md(HEADER.map((h) => h || 'met')),
    md(HEADER.map(() => '---')),
    ...rows.map((r) => md(cells(r))),
    '',
    `${misses.length} of ${rows.length} rows missed their target.`,
    ...(failures.length ? ['', 'Failed sections:', '', ...failures.map((f) => `- ${f.split('\n')[0]}`)] : []),
    '',
    '## Reproduce',
    '',
    '```',
    'npm ci',
    `npm run bench${quick ? ' -- --quick' : ''}   # installs nginx + fcgiwrap if missing (root), builds the fixture, runs every row`,
    '```',
    '',
    'Each row is one of the bench scripts (`npm run bench:clone`, `bench:proxy`, `bench:push`, `bench:protocol`, `bench:create`, `bench:slow`), ' +
      'which print more detail on their own. Run it on an otherwise idle machine: every process shares its cores.',
    '',
  ].join('\n');
  await fs.mkdir(path.dirname(out), { recursive: true });
  await fs.writeFile(out, report);
  log(`wrote ${path.relative(PROJECT_ROOT, out)} in ${minutes.toFixed(1)} minutes`);
  if (failures.length > 0) throw new Error(`${failures.length} section(s) failed`);
}


runMain('bench', main, 3 * 3600 * 1000);
