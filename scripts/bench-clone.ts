import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { countLooseRefs } from '../lib/git/git-refs.js';
import {
  createRepo,
  envInt,
  git,
  makeTempDir,
  median,
  round,
  runMain,
  startCluster,
  startHttpBackend,
  table,
  timed,
  waitFor,
  refLines,
  benchFixture,
  benchGitEnvs,
  isMain,
  type BenchFixture,
} from './bench-support.js';
import { formatKiB } from './gen-fixture.js';

// `npm run bench:clone`: how fast a quorum-git node serves a clone of a large repository, against
// git's own `git http-backend` behind nginx + fcgiwrap serving the same bytes.
//
// 1. the fixture (.bench/fixture.git, made by gen-fixture if missing) is pushed into a fresh repo on a
//    3-node cluster, through node-1;
// 2. node-1's copy of the repo (once its housekeeping has packed the pushed refs) is copied into a
//    project root served by git-http-backend, so both servers read the very same files (same packs,
//    bitmaps or none, packed refs);
// 3. `git clone --bare -q` from each, alternating, one warm-up each and RUNS (default 5) timed runs;
//    the clones from the cluster go round-robin over its nodes (run i to node i mod 3), as clients behind
//    a load balancer would reach it.
// Prints a table and a final JSON line. `npm run bench` calls benchClone. Settings (env): RUNS, FIXTURE (path), CLONE_PROTOCOL (0|1|2:
// force the client's protocol.version for both servers; default: git's default, v2).

const REPO_ID = 'bench/fixture';

async function sizePack(dir: string, env: NodeJS.ProcessEnv): Promise<number> {
  const out = (await git(['count-objects', '-v'], { ...env, GIT_DIR: dir })).stdout;
  return Number(/^size-pack: (\d+)$/m.exec(out)?.[1] ?? NaN);
}

export interface CloneSettings {
  runs: number;
  /** Forces the client's protocol.version for both servers; undefined: git's default (v2). */
  protocol?: string;
  fixture: BenchFixture;
  /** Extra environment for the nodes (e.g. LOG_LEVEL). */
  nodeEnv?: Record<string, string>;
}

export interface CloneResult {
  /** The table and notes, as printed by `npm run bench:clone`. */
  report: string;
  json: { node_s: number[]; http_backend_s: number[]; ratio: number; [key: string]: unknown };
}

export async function benchClone(settings: CloneSettings): Promise<CloneResult> {
  const { runs, protocol } = settings;
  const { dir: fixtureDir, fixture } = settings.fixture;

  const work = makeTempDir('qg-clone-');
  const { clientEnv, serverEnv } = await benchGitEnvs(work);

  const cluster = await startCluster({ env: { ...serverEnv, ...settings.nodeEnv } });
  const pushNode = cluster.nodes[0]!;
  process.stderr.write(`cluster: ${cluster.urls.join(' ')}\n`);
  await createRepo(pushNode.url, REPO_ID);
  const nodeUrl = `${pushNode.url}/${REPO_ID}.git`;

  const push = await timed(() => git(['push', '--quiet', '--mirror', nodeUrl], { ...clientEnv, GIT_DIR: fixtureDir }, { timeoutMs: 600_000 }));
  process.stderr.write(`push --mirror through ${pushNode.serverId}: ${(push.ms / 1000).toFixed(2)} s\n`);
  const expected = await refLines(['for-each-ref', '--format=%(objectname) %(refname)'], { ...clientEnv, GIT_DIR: fixtureDir });
  await waitFor(
    'pushed refs visible on node-1',
    async () => JSON.stringify(await refLines(['ls-remote', nodeUrl], clientEnv)) === JSON.stringify(expected),
    60_000,
    500,
  );

  // Serve node-1's copy with git-http-backend so both servers read identical files.
  // The node keeps each repo at <data dir>/repos/<owner>/<name>.git (lib/storage/repo-store.ts).
  const nodeRepoPath = path.join(pushNode.dataDir, 'repos', `${REPO_ID}.git`);
  if (!existsSync(nodeRepoPath)) throw new Error(`cannot find ${pushNode.serverId}'s copy of ${REPO_ID} at ${nodeRepoPath}`);
  // Copied once the node's housekeeping has packed the pushed refs (lib/git/maintenance.ts): a copy
  // taken while pack-refs prunes the loose ones fails, or misses refs.
  await waitFor(`${pushNode.serverId} to pack the pushed refs`, async () => (await countLooseRefs(nodeRepoPath, 1)) === 0, 30_000, 100);
  const projectRoot = path.join(work, 'git-root');
  const servedCopy = path.join(projectRoot, `${REPO_ID}.git`);
  await fs.mkdir(path.dirname(servedCopy), { recursive: true });
  await fs.cp(nodeRepoPath, servedCopy, { recursive: true });
  const packs = (await fs.readdir(path.join(nodeRepoPath, 'objects', 'pack'))).filter((f) => f.endsWith('.pack')).length;
  const bitmaps = (await fs.readdir(path.join(nodeRepoPath, 'objects', 'pack'))).filter((f) => f.endsWith('.bitmap')).length;
  const servedKiB = await sizePack(nodeRepoPath, clientEnv);
  process.stderr.write(`served repo: ${formatKiB(servedKiB)} in ${packs} pack(s), ${bitmaps} bitmap(s)\n`);

  const backend = await startHttpBackend(work, projectRoot, serverEnv);
  const httpUrl = `${backend.url}/${REPO_ID}.git`;
  const check = await refLines(['ls-remote', httpUrl], clientEnv);
  if (JSON.stringify(check) !== JSON.stringify(expected)) throw new Error('git-http-backend does not serve the pushed refs');

  const targets = [
    { name: 'quorum-git (round-robin)', key: 'node', url: nodeUrl, times: [] as number[] },
    { name: 'nginx+git-http-backend', key: 'http_backend', url: httpUrl, times: [] as number[] },
  ];
  const protoArgs = protocol === undefined ? [] : ['-c', `protocol.version=${protocol}`];
  const clones = path.join(work, 'clones');
  await fs.mkdir(clones, { recursive: true });
  let clonedKiB = NaN;
  // Run 0 is a warm-up (page cache, first-spawn costs); the order alternates every run.
  for (let i = 0; i <= runs; i += 1) {
    const order = i % 2 === 0 ? targets : [...targets].reverse();
    for (const target of order) {
      const dest = path.join(clones, `${target.key}-${i}.git`);
      const url = target.key === 'node' ? `${cluster.urls[i % cluster.urls.length]}/${REPO_ID}.git` : target.url;
      const { ms } = await timed(() => git([...protoArgs, 'clone', '--bare', '-q', url, dest], clientEnv, { timeoutMs: 600_000 }));
      if (i === 0) {
        const got = await refLines(['for-each-ref', '--format=%(objectname) %(refname)'], { ...clientEnv, GIT_DIR: dest });
        if (JSON.stringify(got) !== JSON.stringify(expected)) throw new Error(`clone from ${target.name} does not match the fixture`);
        clonedKiB = await sizePack(dest, clientEnv);
      } else {
        target.times.push(ms / 1000);
      }
      process.stderr.write(`${i === 0 ? 'warm-up' : `run ${i}/${runs}`}  ${target.name.padEnd(24)} ${(ms / 1000).toFixed(3)} s\n`);
      await fs.rm(dest, { recursive: true, force: true });
    }
  }
  await backend.stop();
  await cluster.stop();

  const [node, http] = targets as [(typeof targets)[0], (typeof targets)[0]];
  const nodeMedian = median(node.times);
  const httpMedian = median(http.times);
  const ratio = nodeMedian / httpMedian;
  const mb = (clonedKiB * 1024) / 1e6;
  const report =
    '\n' +
      table(
        ['server', 'runs', 'median s', 'min s', 'max s', 'MB/s'],
        targets.map((t) => [
          t.name,
          t.times.length,
          median(t.times).toFixed(3),
          Math.min(...t.times).toFixed(3),
          Math.max(...t.times).toFixed(3),
          (mb / median(t.times)).toFixed(1),
        ]),
      ) +
      `\n\nratio node / http-backend (median): ${ratio.toFixed(3)}x   (clone of ${fixture.commits} commits, ${mb.toFixed(1)} MB pack, protocol ${protocol ?? 'default'})\n`;
  return {
    report,
    json: {
      bench: 'clone',
      runs,
      protocol: protocol ?? 'default',
      commits: fixture.commits,
      refs: fixture.refs,
      pack_mb: round(mb, 2),
      push_s: round(push.ms / 1000),
      node_median_s: round(nodeMedian),
      http_backend_median_s: round(httpMedian),
      ratio: round(ratio),
      node_s: node.times.map((t) => round(t)),
      http_backend_s: http.times.map((t) => round(t)),
    },
  };
}

async function main(): Promise<void> {
  const protocol = process.env.CLONE_PROTOCOL;
  if (protocol !== undefined && !['0', '1', '2'].includes(protocol)) throw new Error(`CLONE_PROTOCOL must be 0, 1 or 2, got '${protocol}'`);
  const { report, json } = await benchClone({ runs: envInt('RUNS', 5), protocol, fixture: await benchFixture() });
  process.stdout.write(report + JSON.stringify(json) + '\n');
}

if (isMain(import.meta.url)) runMain('bench-clone', main, envInt('BENCH_DEADLINE_S', 1800) * 1000);
