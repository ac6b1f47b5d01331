// Replays one seed of the driver simulation (spec/unit/sim.ts) with a readable trace:
//   npm run sim -- --seed 42 --nodes 3
// Exits 1 when the seed breaks an invariant, 0 otherwise.

import { runSeed } from '../spec/unit/sim.js';

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : process.argv[i + 1];
}

const seed = Number(arg('seed'));
const nodes = Number(arg('nodes', '3'));
if (!Number.isInteger(seed) || (nodes !== 3 && nodes !== 5)) {
  console.error('usage: npm run sim -- --seed N [--nodes 3|5] [--quiet]');
  process.exit(2);
}
const report = await runSeed({ seed, nodes: nodes as 3 | 5, verbose: !process.argv.includes('--quiet') });
for (const line of report.story) console.log(line);
console.log(
  `seed ${seed}, ${nodes} nodes: ${report.ops} ops, ${report.acked} acknowledged, ${report.crashes} crashes, dead for good: ${report.dead.join(', ') || 'none'}, ${report.events} events`,
);
if (report.violation) {
  console.log(`VIOLATION ${report.violation}`);
  process.exit(1);
}
console.log('no violation');
