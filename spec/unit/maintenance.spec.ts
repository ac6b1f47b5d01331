import { expect } from 'chai';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '../../lib/logger.js';
import { Maintenance, type MaintenanceTimers } from '../../lib/maintenance.js';
import { eventually } from '../support/cluster.js';

// When a repo's background gc --auto runs. Timers are manual and git is a stand-in script that logs
// each run and holds it until the spec lets it finish, so "a write arrived while gc ran" is exact.

class ManualTimers implements MaintenanceTimers {
  private next = 0;
  readonly pending = new Map<number, () => void>();
  setTimeout(fn: () => void): unknown {
    this.next += 1;
    this.pending.set(this.next, fn);
    return this.next;
  }
  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  /** Runs every timer set so far. */
  fireAll(): void {
    const due = [...this.pending.values()];
    this.pending.clear();
    for (const fn of due) fn();
  }
}

describe('Maintenance (background gc --auto)', () => {
  let dir: string;
  let runsLog: string;
  let release: string;
  let fakeGit: string;
  let timers: ManualTimers;
  let maintenance: Maintenance;
  const runs = (): string[] => (existsSync(runsLog) ? readFileSync(runsLog, 'utf8').split('\n').filter((l) => l !== '') : []);

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-gc-'));
    runsLog = path.join(dir, 'runs');
    release = path.join(dir, 'release');
    fakeGit = path.join(dir, 'git');
    // Logs its arguments, then waits (at most 30 s) until released.
    await fs.writeFile(fakeGit, `#!/bin/sh\necho "$*" >> '${runsLog}'\ni=0\nwhile [ ! -f '${release}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n`, { mode: 0o755 });
    timers = new ManualTimers();
    maintenance = new Maintenance({ repoPath: () => dir, logger: silentLogger(), delayMs: 1000, timers, gitBinary: fakeGit });
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
    expect(timers.pending.size).to.equal(1);
    await fs.writeFile(release, '');
    timers.fireAll();
    await eventually(() => expect(runs()).to.deep.equal(['-c gc.autoDetach=false gc --auto --quiet']));
  });

  it('runs again after a gc that a write arrived during, so the write is collected too', async () => {
    maintenance.touched('o/r');
    timers.fireAll();
    await eventually(() => expect(runs()).to.have.length(1)); // gc 1 is running
    // A push lands (its pack may be newer than what gc 1 looked at) and its quiet time passes.
    maintenance.touched('o/r');
    timers.fireAll();
    await fs.writeFile(release, '');
    // gc 1 ends: the write during it must still get a gc of its own.
    await eventually(() => expect(timers.pending.size, 'a gc scheduled after the one that ran').to.equal(1));
    timers.fireAll();
    await eventually(() => expect(runs()).to.have.length(2));
  });
});
