import { expect } from 'chai';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '../../lib/base/logger.js';
import { Maintenance } from '../../lib/git/maintenance.js';
import { eventually } from '../support/cluster.js';
import { ManualClock } from '../support/manual-clock.js';

// When a repo's background gc --auto runs. The clock is manual and git is a stand-in script that logs
// each run and holds it until the spec lets it finish, so "a write arrived while gc ran" is exact.

const DELAY_MS = 1000;

describe('Maintenance (background gc --auto)', () => {
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
    // Logs its arguments, then waits (at most 30 s) until released.
    await fs.writeFile(fakeGit, `#!/bin/sh\necho "$*" >> '${runsLog}'\ni=0\nwhile [ ! -f '${release}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n`, { mode: 0o755 });
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
    expect(clock.pending).to.equal(1);
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
    await fs.writeFile(release, '');
    // gc 1 ends: the write during it must still get a gc of its own.
    await eventually(() => expect(clock.pending, 'a gc scheduled after the one that ran').to.equal(1));
    clock.advance(DELAY_MS);
    await eventually(() => expect(runs()).to.have.length(2));
  });
});
