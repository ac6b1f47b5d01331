// Replays one seed of the driver simulation (spec/unit/sim.ts) with a readable trace:
//   npm run sim -- --seed 42 --nodes 3
//   npm run sim -- --seed 3 --nodes 3 --mutant defect-1   (a core with issue 7's defect 1 put back)
//   npm run sim -- --seed 39 --nodes 3 --no-declare       (no node declared dead by the operator)
// Exits 1 when the seed breaks an invariant, 0 otherwise.

import { MUTANT_NAMES, type MutantName } from '../spec/unit/sim-mutants.js';
import { runSeed } from '../spec/unit/sim.js';

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : process.argv[i + 1];
}

const seed = Number(arg('seed'));
const nodes = Number(arg('nodes', '3'));
const mutant = arg('mutant');
if (!Number.isInteger(seed) || (nodes !== 3 && nodes !== 5) || (mutant !== undefined && !(MUTANT_NAMES as readonly string[]).includes(mutant))) {
  console.error(`usage: npm run sim -- --seed N [--nodes 3|5] [--mutant ${MUTANT_NAMES.join('|')}] [--no-declare] [--quiet]`);
  process.exit(2);
}
const report = await runSeed({ seed, nodes: nodes as 3 | 5, verbose: !process.argv.includes('--quiet'), declareDead: !process.argv.includes('--no-declare'), ...(mutant ? { mutant: mutant as MutantName } : {}) });
for (const line of report.story) console.log(line);
console.log(
  `seed ${seed}, ${nodes} nodes: ${report.ops} ops, ${report.acked} acknowledged, ${report.crashes} crashes, dead for good: ${report.dead.join(', ') || 'none'}, ${report.events} events${report.blocked.length > 0 ? `, held by a dead acceptor's transaction: ${report.blocked.join(', ')}` : ''}`,
);
if (report.violation) {
  console.log(`VIOLATION ${report.violation}`);
  process.exit(1);
}
console.log('no violation');
