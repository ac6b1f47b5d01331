// `node dist/scripts/health-prober.js <url> [interval-ms]`: GETs <url> every interval (default 100 ms), as a
// load balancer's health check does, from a process of its own: a prober inside the process that also
// drives the load measures that process's own work too. It fetches once to warm up (undici loads on the
// first fetch) and prints "ready"; it probes from the first line on stdin ("go") until stdin ends, then
// prints one JSON line: { latencies_ms, failed } (a probe fails on a non-200 answer or no answer in 30 s).
// Used by `npm run bench:slow` and by the hostile-input spec, which prints the max it saw.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface ProbeResult {
  latencies_ms: number[];
  failed: number;
}

async function probe(url: string): Promise<{ ms: number; ok: boolean }> {
  const started = performance.now();
  let ok = false;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
    await res.arrayBuffer();
    ok = res.status === 200;
  } catch {
    ok = false;
  }
  return { ms: performance.now() - started, ok };
}

async function main(): Promise<void> {
  const [url, intervalArg] = process.argv.slice(2);
  if (url === undefined) throw new Error('usage: health-prober <url> [interval-ms]');
  const intervalMs = Number(intervalArg ?? 100);
  await probe(url);
  process.stdout.write('ready\n');
  let stop = false;
  process.stdin.on('end', () => (stop = true));
  await new Promise<void>((resolve) => process.stdin.once('data', () => resolve()));
  process.stdin.resume();
  const result: ProbeResult = { latencies_ms: [], failed: 0 };
  while (!stop) {
    const { ms, ok } = await probe(url);
    result.latencies_ms.push(Math.round(ms * 10) / 10);
    if (!ok) result.failed += 1;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/**
 * Starts the prober on `url` and waits until it is warmed up. `go` starts the probing; `stop` ends it
 * and resolves with what it saw.
 */
export async function startHealthProber(url: string, intervalMs = 100): Promise<{ go: () => void; stop: () => Promise<ProbeResult> }> {
  const child: ChildProcess = spawn(process.execPath, [fileURLToPath(import.meta.url), url, String(intervalMs)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (out.startsWith('ready\n')) resolve();
    };
    child.stdout!.on('data', check);
    void exited.then((code) => reject(new Error(`the /health prober exited (${code}) before it was ready`)));
  });
  return {
    go: () => void child.stdin!.write('go\n'),
    stop: async () => {
      child.stdin!.end();
      const code = await exited;
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0 || !last.startsWith('{')) throw new Error(`the /health prober exited with ${code}`);
      return JSON.parse(last) as ProbeResult;
    },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`health-prober: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
