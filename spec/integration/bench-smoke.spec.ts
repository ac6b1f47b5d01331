import { expect } from 'chai';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// The short version of the create benchmark: the script runs end to end on a real 3-node cluster and
// its figures come out consistent. Speed is the script's business (npm run bench:create), never a
// spec's.

const script = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'bench-create.js');

describe('bench-create (short run)', () => {
  it('creates every repo it sends, with no errors, and every node lists them all', async () => {
    const stdout = await new Promise<string>((resolve, reject) => {
      execFile(
        process.execPath,
        [script],
        { env: { ...process.env, TOTAL: '24', CONCURRENCY: '4', BENCH_DEADLINE_S: '120' }, timeout: 120_000 },
        (err, out, errOut) => (err ? reject(new Error(`${err.message}\n${errOut}`)) : resolve(out)),
      );
    });
    const last = stdout.trim().split('\n').pop() ?? '';
    const figures = JSON.parse(last) as { sent: number; ok: number; errors: number; listed_per_node: number[]; creates_per_s: number };
    expect(figures.sent).to.equal(24);
    expect(figures.ok).to.equal(24);
    expect(figures.errors).to.equal(0);
    expect(figures.listed_per_node).to.deep.equal([24, 24, 24]);
    expect(figures.creates_per_s).to.be.greaterThan(0);
  });
});
