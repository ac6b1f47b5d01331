import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

// The shipped chaos run (scripts/chaos.ts) as part of the suite: 3 real nodes, 4 clients, 35 s of
// faults (process-group kills, lone-node kills, pauses, partitions, one node killed for good), then the
// checker. The script exits 0 only when it found no violation; its figures and every violation are
// printed when it does not.

const SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'chaos.js');
// 35 s keeps the whole suite under its 10 minutes on the 2-core machine (at 50 s a CI run took 10 min 3 s);
// `npm run chaos` runs 60 s, and longer with --duration-s.
const FAULT_SECONDS = 35;
/** Faults, draining in-flight pushes (20 s at most), healing, convergence (60 s at most), checks. */
const RUN_TIMEOUT_MS = 240_000;

function runChaos(args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    // SIGTERM lets the script clean up its nodes; it is bounded by its own deadline too.
    const timer = setTimeout(() => child.kill('SIGTERM'), RUN_TIMEOUT_MS);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output });
    });
  });
}

describe('chaos run (npm run chaos)', function () {
  this.timeout(RUN_TIMEOUT_MS + 10_000);

  it(`loses no acknowledged write and converges after ${FAULT_SECONDS} s of crashes, pauses and partitions on 3 nodes`, async () => {
    const seed = String(Date.now() % 2 ** 32);
    const { code, signal, output } = await runChaos(['--duration-s', String(FAULT_SECONDS), '--nodes', '3', '--seed', seed]);
    // The whole output with its seed, whatever fails: a run that hung is replayed from it.
    expect(/violations: \d+/.test(output), `chaos run (seed ${seed}) printed no figures; its output:\n${output}`).to.equal(true);
    expect({ code, signal }, `chaos run (seed ${seed}) output:\n${output}`).to.deep.equal({ code: 0, signal: null });
  });
});
