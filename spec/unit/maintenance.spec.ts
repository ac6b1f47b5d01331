import { expect } from 'chai';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '../../lib/base/logger.js';
import { Maintenance, REF_CHECK_DELAY_MS, looseRefsToPack } from '../../lib/git/maintenance.js';
import { eventually } from '../support/cluster.js';
import { ManualClock } from '../support/manual-clock.js';

// When a repo's background gc --auto and pack-refs run. The clock is manual and git is a stand-in
// script that logs each run and holds it until the spec lets it finish, so "a write arrived while gc
// ran" is exact.

const DELAY_MS = 1000;

describe('Maintenance (background gc --auto and pack-refs)', () => {
  let dir: string;
  let runsLog: string;
  let release: string;
  let fakeGit: string;
  let clock: ManualClock;
  let maintenance: Maintenance;
  const runs = (): string[] => (existsSync(runsLog) ? readFileSync(runsLog, 'utf8').split('\n').filter((l) => l !== '') : []);

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-gc-'));
    runsLog = path.join(dir, 'runs');
    release = path.join(dir, 'release');
    fakeGit = path.join(dir, 'git');
    // Logs its arguments, then waits (at most 30 s) until released; pack-refs takes the loose refs away.
    await fs.writeFile(
      fakeGit,
      `#!/bin/sh\necho "$*" >> '${runsLog}'\ni=0\nwhile [ ! -f '${release}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n[ "$1" = pack-refs ] && rm -r refs\nexit 0\n`,
      { mode: 0o755 },
    );
    clock = new ManualClock();
    maintenance = new Maintenance({ repoPath: () => dir, logger: silentLogger(), delayMs: DELAY_MS, clock, gitBinary: fakeGit });
  });
  afterEach(async () => {
    maintenance.stop();
    await fs.writeFile(release, '');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('runs gc --auto once a touched repo has been quiet, and once for a burst of writes', async () => {
    maintenance.touched('o/r');
    maintenance.touched('o/r');
    maintenance.touched('o/r');
    expect(clock.pending, 'one gc and one ref check').to.equal(2);
    await fs.writeFile(release, '');
    clock.advance(DELAY_MS - 1);
    expect(clock.pending, 'still waiting for the quiet time').to.equal(1);
    clock.advance(1);
    expect(clock.pending).to.equal(0);
    await eventually(() => expect(runs()).to.deep.equal(['-c gc.autoDetach=false gc --auto --quiet']));
  });

  it('runs again after a gc that a write arrived during, so the write is collected too', async () => {
    maintenance.touched('o/r');
    clock.advance(DELAY_MS);
    await eventually(() => expect(runs()).to.have.length(1)); // gc 1 is running
    // A push lands (its pack may be newer than what gc 1 looked at) and its quiet time passes.
    maintenance.touched('o/r');
    clock.advance(DELAY_MS);
    expect(runs(), 'one gc at a time').to.have.length(1);
    await fs.writeFile(release, '');
    // gc 1 ends: the write during it gets a gc of its own, at once (its quiet time is over).
    await eventually(() => expect(runs()).to.deep.equal(['-c gc.autoDetach=false gc --auto --quiet', '-c gc.autoDetach=false gc --auto --quiet']));
  });

  const looseRefs = async (count: number): Promise<void> => {
    await fs.mkdir(path.join(dir, 'refs', 'heads', 'topic'), { recursive: true });
    await fs.mkdir(path.join(dir, 'refs', 'tags'), { recursive: true });
    for (let i = 0; i < count; i += 1) {
      const ref = i % 3 === 0 ? `tags/v${i}` : i % 3 === 1 ? `heads/topic/b${i}` : `heads/b${i}`;
      await fs.writeFile(path.join(dir, 'refs', ref), `${'1'.repeat(40)}\n`);
    }
  };

  it('packs the refs of a repo holding 16 loose refs soon after a write, without waiting for its quiet time', async () => {
    await looseRefs(16);
    await fs.writeFile(release, '');
    maintenance.touched('o/r');
    // More writes do not push the ref check back: a repo pushed to without pause needs it most.
    clock.advance(REF_CHECK_DELAY_MS - 1);
    maintenance.touched('o/r');
    clock.advance(1);
    await eventually(() => expect(runs()).to.deep.equal(['pack-refs --all']));
    clock.advance(DELAY_MS);
    await eventually(() => expect(runs()).to.deep.equal(['pack-refs --all', '-c gc.autoDetach=false gc --auto --quiet']));
  });

  it('leaves 15 loose refs (and a lock file, which is no ref) to gc', async () => {
    await looseRefs(15);
    await fs.writeFile(path.join(dir, 'refs', 'heads', 'b2.lock'), '');
    await fs.writeFile(release, '');
    maintenance.touched('o/r');
    clock.advance(DELAY_MS);
    await eventually(() => expect(runs()).to.have.length(1));
    expect(runs()).to.deep.equal(['-c gc.autoDetach=false gc --auto --quiet']);
  });

  it('waits for more loose refs the larger the packed-refs it would rewrite', () => {
    expect(looseRefsToPack(0)).to.equal(16);
    expect(looseRefsToPack(1000)).to.equal(17);
    expect(looseRefsToPack(40 * 1024)).to.equal(44);
    expect(looseRefsToPack(600 * 1024)).to.equal(63);
    expect(looseRefsToPack(60 * 1024 * 1024)).to.equal(96);
  });
});
