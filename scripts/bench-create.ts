import { randomBytes } from 'node:crypto';
import { envInt, getJson, isMain, nowMs, percentile, postJson, round, runMain, sleep, startCluster, table } from './bench-support.js';

// `npm run bench:create`: repo creates per second on a 3-node cluster. CONCURRENCY (default 8) clients
// POST /repos with distinct names, round-robin across the nodes, until TOTAL (default 400) creates
// were sent, or for DURATION_S seconds when that is set. Every create is a two-phase commit on a
// quorum. Reports creates/s, p50/p99 latency and errors (anything but 201), then a JSON line. NODES
// (default 3) sets the cluster's size. `npm run bench` calls benchCreate on 3 and 5 nodes.

const REQUEST_TIMEOUT_MS = 30_000;

export interface CreateSettings {
  nodes: number;
  concurrency: number;
  /** Creates to send (Infinity with durationS). */
  total: number;
  durationS?: number;
  convergeS: number;
  nodeEnv?: Record<string, string>;
}

export interface CreateResult {
  report: string;
  json: { ok: number; errors: number; creates_per_s: number; p50_ms: number; p99_ms: number; latencies_ms: number[]; [key: string]: unknown };
}

export async function benchCreate(settings: CreateSettings): Promise<CreateResult> {
  const { concurrency, durationS, total } = settings;
  const cluster = await startCluster({ size: settings.nodes, env: settings.nodeEnv });
  const urls = cluster.urls;
  process.stderr.write(`cluster: ${urls.join(' ')}\n`);
  const runId = randomBytes(3).toString('hex');

  const latencies: number[] = [];
  const errors = new Map<string, number>();
  let next = 0;
  const started = nowMs();
  const deadline = durationS === undefined ? Infinity : started + durationS * 1000;

  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next;
      if (i >= total || nowMs() >= deadline) return;
      next += 1;
      const url = urls[i % urls.length]!;
      const repoId = `bench-${runId}/repo-${i.toString().padStart(6, '0')}`;
      const t0 = nowMs();
      try {
        const { status, body } = await postJson(`${url}/repos`, { repo_id: repoId }, REQUEST_TIMEOUT_MS);
        const ms = nowMs() - t0;
        if (status === 201) latencies.push(ms);
        else {
          const code = (body as { error?: { code?: string }; code?: string })?.error?.code ?? (body as { code?: string })?.code ?? '';
          const key = `${status}${code ? ` ${code}` : ''}`;
          errors.set(key, (errors.get(key) ?? 0) + 1);
        }
      } catch (err) {
        const key = (err as Error).name === 'TimeoutError' ? 'timeout' : `network: ${(err as Error).message}`;
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, () => worker()));
  const elapsedS = (nowMs() - started) / 1000;
  const sent = next;

  // Every node should end up listing every created repo: those that missed a commit catch up by
  // anti-entropy. Counted right after the last create, then polled (up to CONVERGE_S) until equal.
  const ok = latencies.length;
  const listed = (): Promise<number[]> =>
    Promise.all(
      urls.map(async (u) => {
        const { body } = await getJson(`${u}/repos`, 10_000);
        const repos = (body as { repos?: unknown[] }).repos ?? [];
        return repos.filter((r) => String(typeof r === 'string' ? r : (r as { repo_id?: string }).repo_id).startsWith(`bench-${runId}/`)).length;
      }),
    );
  const afterRun = await listed();
  let counts = afterRun;
  const convergeStarted = nowMs();
  const convergeDeadline = convergeStarted + settings.convergeS * 1000;
  while (counts.some((c) => c < ok) && nowMs() < convergeDeadline) {
    await sleep(100);
    counts = await listed();
  }
  const convergedMs = counts.every((c) => c >= ok) ? nowMs() - convergeStarted : NaN;
  await cluster.stop();

  const errorCount = sent - ok;
  const rate = ok / elapsedS;
  const p50 = percentile(latencies, 50);
  const p99 = percentile(latencies, 99);
  const max = latencies.length ? Math.max(...latencies) : NaN;
  const report =
    '\n' +
      table(
        ['creates', 'ok', 'errors', 'seconds', 'creates/s', 'p50 ms', 'p99 ms', 'max ms'],
        [[sent, ok, errorCount, elapsedS.toFixed(2), rate.toFixed(1), p50.toFixed(1), p99.toFixed(1), max.toFixed(1)]],
      ) +
      `\n\n${concurrency} clients, round-robin over ${urls.length} nodes; repos listed per node right after: ${afterRun.join(', ')}; ` +
      `${Number.isNaN(convergedMs) ? `NOT converged: ${counts.join(', ')}` : `all nodes list all ${ok} after ${convergedMs.toFixed(0)} ms`}\n` +
      (errors.size ? `errors: ${[...errors].map(([k, v]) => `${k} x${v}`).join(', ')}\n` : '');
  return {
    report,
    json: {
      bench: 'create',
      nodes: urls.length,
      concurrency,
      sent,
      ok,
      errors: errorCount,
      error_kinds: Object.fromEntries(errors),
      seconds: round(elapsedS),
      creates_per_s: round(rate, 1),
      p50_ms: round(p50, 1),
      p99_ms: round(p99, 1),
      max_ms: round(max, 1),
      listed_per_node_after_run: afterRun,
      listed_per_node: counts,
      converged_ms: Number.isNaN(convergedMs) ? null : round(convergedMs, 0),
      latencies_ms: latencies.map((ms) => round(ms, 1)),
    },
  };
}

async function main(): Promise<void> {
  const durationS = process.env.DURATION_S ? envInt('DURATION_S', 10) : undefined;
  const { report, json } = await benchCreate({
    nodes: envInt('NODES', 3),
    concurrency: envInt('CONCURRENCY', 8),
    durationS,
    total: durationS === undefined ? envInt('TOTAL', 400) : Infinity,
    convergeS: envInt('CONVERGE_S', 15),
  });
  const { latencies_ms: _latencies, ...printed } = json;
  process.stdout.write(report + JSON.stringify(printed) + '\n');
}

if (isMain(import.meta.url)) runMain('bench-create', main, envInt('BENCH_DEADLINE_S', 900) * 1000);
