import { expect } from 'chai';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../scripts/bench-support.js';

// The scripts' process runner (scripts/bench-support.ts run()), which the chaos run's clients push
// with. Found by `npm run chaos`: a push's git timed out and was killed, but its git-remote-http,
// blocked on a connection nobody answered, kept git's stdout open, so run() waited for ever and the
// workload never drained (the run gave up after 360 s).

describe('run() of the scripts', function () {
  it('on its timeout kills every process the command started, so a child still holding its output cannot hang it', async function () {
    this.timeout(5000);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-run-'));
    try {
      const pidFile = path.join(dir, 'pid');
      const err = await run('sh', ['-c', `sleep 1000 & echo $! > ${pidFile}; wait`], { timeoutMs: 300 }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err?.message).to.match(/timed out after 300 ms/);
      // Killed with its group; reaped by init a moment later (until then it is a zombie, and signal 0 reaches it).
      const pid = Number(await fs.readFile(pidFile, 'utf8'));
      const gone = (): boolean => {
        try {
          process.kill(pid, 0);
          return (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] ?? '').startsWith('Z');
        } catch {
          return true;
        }
      };
      expect(gone(), 'the backgrounded sleep is gone').to.equal(true);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
