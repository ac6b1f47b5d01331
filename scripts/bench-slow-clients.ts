import nodeHttp from 'node:http';
import { createRepo, envInt, isMain, log, median, round, runMain, sleep, startCluster, table, waitConverged } from './bench-support.js';
import { startHealthProber } from './health-prober.js';
import { pickCoordinator } from '../lib/core/routing.js';

// `npm run bench:slow`: does a node stay responsive while slow clients hold connections to it (issue 8)?
// CLIENTS (default 300) unauthenticated clients from one address (127.0.0.2) each POST to git-upload-pack of a repo on
// its coordinator, announcing a 1 GB body and sending one byte every DRIP_MS (2000): the approach of the
// 300-slow-clients case in spec/integration/hostile-input.spec.ts. For PROBE_S (20) seconds from the
// moment they connect, GET /health on that node every 100 ms, from a process of its own; reports the
// probes' median and max latency (target: max <= 100 ms) and how the slow clients were answered. Nodes
// run with their default settings.
// `npm run bench` calls benchSlowClients.

const PROBE_INTERVAL_MS = 100;
const SLOW_CLIENT_ADDRESS = '127.0.0.2';
export const HEALTH_MAX_TARGET_MS = 100;

export interface SlowClientsSettings {
  clients: number;
  dripMs: number;
  probeS: number;
  nodeEnv?: Record<string, string>;
}

export interface SlowClientsResult {
  report: string;
  json: { probes: number; median_ms: number; max_ms: number; failed_probes: number; answers: Record<string, number>; latencies_ms: number[]; [key: string]: unknown };
}

/** A POST announcing a huge body that sends one byte of `request` every `dripMs`; `stop` ends it. */
function slowClient(url: string, pathname: string, request: string, dripMs: number): { answer: Promise<string>; stop: () => void } {
  const { hostname, port } = new URL(url);
  const req = nodeHttp.request({
    host: hostname,
    port,
    method: 'POST',
    path: pathname,
    headers: { 'content-type': 'application/x-git-upload-pack-request', 'content-length': String(10 ** 9) },
    // An attacker's address, not the cluster's: a node never caps its peers' or loopback's own
    // (127.0.0.1) connections, and 127.0.0.2 is loopback too on Linux.
    localAddress: SLOW_CLIENT_ADDRESS,
  });
  let settled = false;
  const answer = new Promise<string>((resolve) => {
    const settle = (what: string): void => {
      if (settled) return;
      settled = true;
      resolve(what);
    };
    req.on('response', (res) => {
      res.on('data', () => undefined);
      res.on('error', () => settle(String(res.statusCode)));
      res.on('end', () => settle(String(res.statusCode)));
      res.on('close', () => settle(String(res.statusCode)));
    });
    req.on('error', () => settle('closed'));
    req.on('close', () => settle('closed'));
  });
  req.flushHeaders();
  let sent = 0;
  const write = (): void => {
    if (!req.destroyed) req.write(request[sent++ % request.length]!);
  };
  write();
  const drip = setInterval(write, dripMs);
  void answer.then(() => clearInterval(drip));
  return {
    answer,
    stop: () => {
      clearInterval(drip);
      req.destroy();
    },
  };
}

function pkt(line: string): string {
  return (line.length + 4).toString(16).padStart(4, '0') + line;
}

export async function benchSlowClients(settings: SlowClientsSettings): Promise<SlowClientsResult> {
  const cluster = await startCluster({ size: 3, env: settings.nodeEnv });
  const repoId = 'bench/slow-clients';
  await createRepo(cluster.urls[0]!, repoId);
  await waitConverged(cluster, repoId);
  const url = pickCoordinator(repoId, cluster.urls)!;
  const node = cluster.nodes[cluster.urls.indexOf(url)]!;
  log(`${settings.clients} slow clients at ${node.serverId} (${url})`);
  const request = pkt(`want ${'1'.repeat(40)}\n`) + '0000' + pkt('done\n');
  const answers: Record<string, number> = {};
  const latencies: number[] = [];
  let failedProbes = 0;
  /** How the slow clients had been answered when the probing ended (before they are stopped). */
  const answered: Record<string, number> = {};
  const prober = await startHealthProber(`${url}/health`, PROBE_INTERVAL_MS);
  const slow = Array.from({ length: settings.clients }, () => slowClient(url, `/${repoId}.git/git-upload-pack`, request, settings.dripMs));
  for (const c of slow) void c.answer.then((a) => (answers[a] = (answers[a] ?? 0) + 1));
  try {
    prober.go();
    await sleep(settings.probeS * 1000);
    const probed = await prober.stop();
    latencies.push(...probed.latencies_ms);
    failedProbes = probed.failed;
    Object.assign(answered, answers);
  } finally {
    for (const c of slow) c.stop();
    await Promise.all(slow.map((c) => c.answer));
  }
  const running = cluster.nodes.every((n) => n.running);
  await cluster.stop();
  if (!running) throw new Error('a node exited under the slow clients');
  const med = median(latencies);
  const max = Math.max(...latencies);
  const held = settings.clients - Object.values(answered).reduce((a, b) => a + b, 0);
  const report =
    '\n' +
    table(
      ['/health under slow clients', 'probes', 'failed', 'median ms', 'max ms', 'target'],
      [[`${settings.clients} clients at ${node.serverId}`, latencies.length, failedProbes, med.toFixed(1), max.toFixed(1), max <= HEALTH_MAX_TARGET_MS ? `ok (max <= ${HEALTH_MAX_TARGET_MS} ms)` : `MISSED (max > ${HEALTH_MAX_TARGET_MS} ms)`]],
    ) +
    `\n\nslow clients answered before they were stopped: ${JSON.stringify(answered)}; ${held} still held at the end (one byte every ${settings.dripMs} ms)\n`;
  return {
    report,
    json: {
      bench: 'slow-clients',
      clients: settings.clients,
      probes: latencies.length,
      failed_probes: failedProbes,
      median_ms: round(med, 1),
      max_ms: round(max, 1),
      answers: answered,
      held,
      latencies_ms: latencies.map((ms) => round(ms, 1)),
    },
  };
}

async function main(): Promise<void> {
  const { report, json } = await benchSlowClients({ clients: envInt('CLIENTS', 300), dripMs: envInt('DRIP_MS', 2000), probeS: envInt('PROBE_S', 20) });
  const { latencies_ms: _latencies, ...printed } = json;
  process.stdout.write(report + JSON.stringify(printed) + '\n');
}

if (isMain(import.meta.url)) runMain('bench-slow-clients', main, envInt('BENCH_DEADLINE_S', 300) * 1000);
