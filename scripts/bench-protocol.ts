import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {
  HOST,
  benchFixture,
  benchGitEnvs,
  createRepo,
  envInt,
  freePort,
  git,
  log,
  makeTempDir,
  median,
  onCleanup,
  round,
  run,
  runMain,
  isMain,
  percentile,
  startCluster,
  startHttpBackend,
  table,
  type BenchFixture,
  timed,
  waitConverged,
  type Cluster,
} from './bench-support.js';
import { formatKiB } from './gen-fixture.js';

// `npm run bench:protocol`: what protocol v2 and partial clones save, measured from outside on a
// 3-node cluster: bytes on the wire (counted by a TCP relay in front of node-1, both directions,
// HTTP headers included) and time, medians over RUNS runs (one warm-up run first, not counted; the
// order of the variants alternates every run).
//
// 1. Many refs: a repo with REFS (default 10,000) refs shaped like a busy hosted project: 2% branches,
//    8% tags, the rest pull-request heads (refs/pull/<n>/head), over a 20-commit history.
//    - `git ls-remote --heads` (one prefix: v2 sends `ref-prefix refs/heads/`, v0 gets every ref);
//    - `git fetch <url> main` into an empty repo (one branch, tags followed as git does by default);
//    each with `-c protocol.version=0` and `=2`.
// 2. Partial clones of the fixture (scripts/gen-fixture.ts: a real project's shape, FIXTURE_COMMITS
//    commits; FIXTURE names the directory): `git clone` with checkout, full against
//    `--filter=blob:none` and `--filter=tree:0` (protocol v2). The checkout's lazy fetch of the
//    blobs (and trees) it needs is part of each partial clone's bytes and time, as users meet it.
//
// With a baseline (`npm run bench`), the many-refs repo is also served by git http-backend behind nginx
// (the same bare repo, a relay of its own in front), and each of its variants runs in the same rotation.
// Settings (env): RUNS (5), REFS (10000), FIXTURE, FIXTURE_COMMITS, BENCH_DEADLINE_S (1800).
// The bytes do not depend on the machine's load; the times do (run it on an idle machine).

const REFS_REPO = 'bench/many-refs';
const PROJECT_REPO = 'bench/project';
const HISTORY_COMMITS = 20;

/** A TCP relay to `target` that counts the bytes each way; `take` reads and resets the counts. */
async function countingRelay(target: { host: string; port: number }): Promise<{ url: string; take: () => { up: number; down: number } }> {
  let up = 0;
  let down = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    sockets.add(client).add(upstream);
    client.on('data', (c: Buffer) => (up += c.length));
    upstream.on('data', (c: Buffer) => (down += c.length));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => {
      sockets.delete(client);
      upstream.destroy();
    });
    upstream.on('close', () => {
      sockets.delete(upstream);
      client.destroy();
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => resolve());
  });
  onCleanup(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return {
    url: `http://${HOST}:${port}`,
    take: () => {
      const counts = { up, down };
      up = 0;
      down = 0;
      return counts;
    },
  };
}

/** Builds a local repo with a small history and `refs` refs (branches, tags, pull-request heads). */
async function manyRefsRepo(dir: string, refs: number, env: NodeJS.ProcessEnv): Promise<{ heads: number; tags: number; pulls: number }> {
  await git(['init', '--quiet', '--bare', '--initial-branch=main', dir], env);
  // A fixed history: fast-import with fixed dates, so object ids are the same on every run.
  let stream = '';
  for (let i = 1; i <= HISTORY_COMMITS; i += 1) {
    const content = `line ${i}\n`.repeat(i);
    const message = `commit ${i}\n`;
    stream += `commit refs/heads/main\nmark :${i}\ncommitter Bench <bench@example.invalid> ${1700000000 + i * 60} +0000\n`;
    stream += `data ${Buffer.byteLength(message)}\n${message}`;
    stream += `M 100644 inline file-${i % 5}.txt\ndata ${Buffer.byteLength(content)}\n${content}\n`;
  }
  await run('git', ['fast-import', '--quiet'], { env: { ...env, GIT_DIR: dir }, input: stream });
  const oids = (await git(['rev-list', 'main'], { ...env, GIT_DIR: dir })).stdout.trim().split('\n');
  const heads = Math.max(1, Math.round(refs * 0.02)) - 1; // main is one of them
  const tags = Math.round(refs * 0.08);
  const pulls = refs - 1 - heads - tags;
  const lines: string[] = [];
  const oid = (k: number): string => oids[k % oids.length]!;
  for (let k = 0; k < heads; k += 1) lines.push(`create refs/heads/topic-${String(k).padStart(5, '0')} ${oid(k)}`);
  for (let k = 0; k < tags; k += 1) lines.push(`create refs/tags/v${Math.floor(k / 100)}.${k % 100}.0 ${oid(k)}`);
  for (let k = 0; k < pulls; k += 1) lines.push(`create refs/pull/${k + 1}/head ${oid(k)}`);
  await run('git', ['update-ref', '--stdin'], { env: { ...env, GIT_DIR: dir }, input: `${lines.join('\n')}\n`, timeoutMs: 600_000 });
  return { heads: heads + 1, tags, pulls };
}

export interface Variant {
  name: string;
  /** Reads and resets the byte counts of the relay the operation goes through. */
  take: () => { up: number; down: number };
  /** Runs the operation once (into a fresh directory `dest`). */
  op: (dest: string) => Promise<unknown>;
  ms: number[];
  up: number[];
  down: number[];
}

/** Runs every variant `runs` times (after one warm-up), alternating the order; collects time and bytes. */
async function measure(label: string, variants: Variant[], runs: number, scratch: string): Promise<void> {
  for (let i = 0; i <= runs; i += 1) {
    const order = i % 2 === 0 ? variants : [...variants].reverse();
    for (const v of order) {
      const dest = path.join(scratch, `${label}-${i}-${v.name.replace(/\W+/g, '_')}`);
      v.take();
      const { ms } = await timed(() => v.op(dest));
      const bytes = v.take();
      if (i > 0) {
        v.ms.push(ms);
        v.up.push(bytes.up);
        v.down.push(bytes.down);
      }
      log(`${i === 0 ? 'warm-up' : `run ${i}/${runs}`}  ${label}  ${v.name.padEnd(22)} ${ms.toFixed(0).padStart(6)} ms  ${bytes.down} B down, ${bytes.up} B up`);
      await fs.rm(dest, { recursive: true, force: true });
    }
  }
}

function kib(bytes: number): string {
  return (bytes / 1024).toFixed(1);
}

function rows(label: string, variants: Variant[]): Array<Array<string | number>> {
  const base = variants[0]!;
  return variants.map((v) => [
    `${label}: ${v.name}`,
    kib(median(v.down)),
    kib(median(v.up)),
    (median(v.down) / median(base.down)).toFixed(3),
    median(v.ms).toFixed(0),
    (median(v.ms) / median(base.ms)).toFixed(3),
  ]);
}

export interface VariantSummary {
  down_bytes: number;
  up_bytes: number;
  median_ms: number;
  p99_ms: number;
  ms: number[];
}

function summary(variants: Variant[]): Record<string, VariantSummary> {
  return Object.fromEntries(
    variants.map((v) => [
      v.name,
      { down_bytes: median(v.down), up_bytes: median(v.up), median_ms: round(median(v.ms), 1), p99_ms: round(percentile(v.ms, 99), 1), ms: v.ms.map((t) => round(t, 1)) },
    ]),
  );
}

async function setUpRepo(cluster: Cluster, repoId: string, source: string, clientEnv: NodeJS.ProcessEnv, what: string): Promise<void> {
  const node = cluster.nodes[0]!;
  await createRepo(node.url, repoId);
  const pushed = await timed(() =>
    run('git', ['push', '--quiet', '--mirror', `${node.url}/${repoId}.git`], { env: { ...clientEnv, GIT_DIR: source }, timeoutMs: 1_200_000, allowFail: true }),
  );
  if (pushed.value.code !== 0) {
    const said = pushed.value.stderr.split('\n').filter((l) => l.startsWith('remote:') || l.startsWith('error:') || l.startsWith('fatal:'));
    throw new Error(`push --mirror of ${what} failed:\n${said.slice(0, 20).join('\n')}`);
  }
  log(`push --mirror of ${what} through ${node.serverId}: ${(pushed.ms / 1000).toFixed(1)} s`);
  await waitConverged(cluster, repoId, 120_000);
}

export interface ProtocolSettings {
  runs: number;
  refs: number;
  fixture: BenchFixture;
  /** Also serve the many-refs repo with git http-backend and measure it alongside (variants `http v0`, `http v2`). */
  baseline: boolean;
  /** Part 2 (partial clones of the fixture). */
  partialClones: boolean;
  nodeEnv?: Record<string, string>;
}

export interface ProtocolResult {
  report: string;
  json: { ls_remote_heads: Record<string, VariantSummary>; fetch_main: Record<string, VariantSummary>; [key: string]: unknown };
}

export async function benchProtocol(settings: ProtocolSettings): Promise<ProtocolResult> {
  const { runs, refs: refCount } = settings;
  const work = makeTempDir('qg-proto-');
  const scratch = path.join(work, 'scratch');
  await fs.mkdir(scratch, { recursive: true });
  const { clientEnv, serverEnv } = await benchGitEnvs(work);
  const { dir: fixtureDir, fixture } = settings.fixture;

  // Only reads are measured: long 2PC timeouts keep the set-up's large pushes from failing on a busy machine.
  const cluster = await startCluster({ env: { ...serverEnv, PREPARE_TIMEOUT_MS: '60000', COMMIT_TIMEOUT_MS: '60000', PEER_TIMEOUT_MS: '60000', ...settings.nodeEnv } });
  log(`cluster: ${cluster.urls.join(' ')}`);
  const relay = await countingRelay({ host: HOST, port: cluster.nodes[0]!.port });

  // 1. Many refs: ls-remote of one prefix and a one-branch fetch, v0 against v2.
  const refsSource = path.join(work, 'many-refs.git');
  const shape = await manyRefsRepo(refsSource, refCount, clientEnv);
  log(`many-refs repo: ${refCount} refs (${shape.heads} branches, ${shape.tags} tags, ${shape.pulls} pull heads), ${HISTORY_COMMITS} commits`);
  await setUpRepo(cluster, REFS_REPO, refsSource, clientEnv, `${refCount} refs`);
  const nodeRefs = { url: `${relay.url}/${REFS_REPO}.git`, take: relay.take, prefix: '' };
  const servers = [nodeRefs];
  let backend: { stop: () => Promise<void> } | undefined;
  if (settings.baseline) {
    const projectRoot = path.join(work, 'git-root');
    await fs.mkdir(path.join(projectRoot, 'bench'), { recursive: true });
    await fs.cp(refsSource, path.join(projectRoot, `${REFS_REPO}.git`), { recursive: true });
    const started = await startHttpBackend(work, projectRoot, serverEnv);
    backend = started;
    const port = Number(new URL(started.url).port);
    const httpRelay = await countingRelay({ host: HOST, port });
    servers.push({ url: `${httpRelay.url}/${REFS_REPO}.git`, take: httpRelay.take, prefix: 'http ' });
  }
  const lsRemote = (version: 0 | 2, server: (typeof servers)[0]): Variant => ({
    name: `${server.prefix}v${version}`,
    take: server.take,
    ms: [],
    up: [],
    down: [],
    op: async () => {
      const out = (await git(['-c', `protocol.version=${version}`, 'ls-remote', '--heads', server.url], clientEnv)).stdout;
      const lines = out.split('\n').filter(Boolean).length;
      if (lines !== shape.heads) throw new Error(`ls-remote --heads (v${version}) listed ${lines} refs, expected ${shape.heads}`);
    },
  });
  const fetchOne = (version: 0 | 2, server: (typeof servers)[0]): Variant => ({
    name: `${server.prefix}v${version}`,
    take: server.take,
    ms: [],
    up: [],
    down: [],
    op: async (dest) => {
      await git(['init', '--quiet', '--bare', dest], clientEnv);
      await git(['-c', `protocol.version=${version}`, 'fetch', '--quiet', server.url, 'main'], { ...clientEnv, GIT_DIR: dest });
    },
  });
  const lsVariants = servers.flatMap((server) => [lsRemote(0, server), lsRemote(2, server)]);
  const fetchVariants = servers.flatMap((server) => [fetchOne(0, server), fetchOne(2, server)]);
  await measure('ls-remote --heads', lsVariants, runs, scratch);
  await measure('fetch main', fetchVariants, runs, scratch);
  await backend?.stop();

  // 2. Partial clones of a project-shaped repo, with checkout.
  const cloneVariants: Variant[] = [];
  if (settings.partialClones) {
    await setUpRepo(cluster, PROJECT_REPO, fixtureDir, clientEnv, `the fixture (${fixture.commits} commits, ${formatKiB(fixture.sizePackKiB)})`);
    const projectUrl = `${relay.url}/${PROJECT_REPO}.git`;
    const clone = (name: string, filter?: string): Variant => ({
      name,
      take: relay.take,
      ms: [],
      up: [],
      down: [],
      op: async (dest) => {
        const result = await git(['clone', '--quiet', ...(filter ? [`--filter=${filter}`] : []), projectUrl, dest], clientEnv);
        if (/filtering not recognized/.test(result.stderr)) throw new Error(`the node ignored --filter=${filter}`);
      },
    });
    cloneVariants.push(clone('full'), clone('blob:none', 'blob:none'), clone('tree:0', 'tree:0'));
    await measure('clone', cloneVariants, runs, scratch);
  }
  await cluster.stop();

  const report =
    '\n' +
      table(
        ['operation', 'KiB down', 'KiB up', 'bytes x', 'median ms', 'time x'],
        [...rows(`ls-remote --heads (${refCount} refs)`, lsVariants), ...rows(`fetch main (${refCount} refs)`, fetchVariants), ...(cloneVariants.length > 0 ? rows(`clone (${fixture.commits} commits)`, cloneVariants) : [])],
      ) +
      `\n\nmedians of ${runs} runs; bytes counted both ways at a relay in front of node-1 (HTTP headers included); "x" is against the first row of each group\n`;
  return {
    report,
    json: {
      bench: 'protocol',
      runs,
      refs: refCount,
      fixture_commits: fixture.commits,
      fixture_pack_kib: fixture.sizePackKiB,
      ls_remote_heads: summary(lsVariants),
      fetch_main: summary(fetchVariants),
      clone: summary(cloneVariants),
    },
  };
}

async function main(): Promise<void> {
  const { report, json } = await benchProtocol({
    runs: envInt('RUNS', 5),
    refs: envInt('REFS', 10_000, 10),
    fixture: await benchFixture(),
    baseline: false,
    partialClones: true,
  });
  process.stdout.write(report + JSON.stringify(json) + '\n');
}

if (isMain(import.meta.url)) runMain('bench-protocol', main, envInt('BENCH_DEADLINE_S', 1800) * 1000);
