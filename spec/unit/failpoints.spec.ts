import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect } from 'chai';
import {
  FAILPOINT_NAMES,
  FailpointError,
  configureFailpoints,
  failpointAction,
  hit,
  parseFailpoints,
} from '../../lib/base/failpoints.js';
import { ManualClock } from '../support/manual-clock.js';

const MODULE_URL = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'lib', 'base', 'failpoints.js')).href;

/** Runs a fresh node process that imports the module with FAILPOINTS set and hits `name`. */
function runChild(failpoints: string, name: string): ReturnType<typeof spawnSync> {
  const script = `const m = await import(${JSON.stringify(MODULE_URL)}); await m.hit(${JSON.stringify(name)}); process.stdout.write('went on');`;
  return spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { PATH: process.env.PATH, FAILPOINTS: failpoints },
    encoding: 'utf8',
    timeout: 20_000,
  });
}

describe('failpoints', () => {
  afterEach(() => configureFailpoints(undefined));

  it('lists every op, role and point: 3 ops x (4 coordinator + 3 participant) names', () => {
    expect(FAILPOINT_NAMES).to.have.length(21);
    expect(new Set(FAILPOINT_NAMES).size).to.equal(21);
    for (const name of [
      'create.coordinator.before-prepare',
      'delete.coordinator.after-votes',
      'push.coordinator.after-decision',
      'push.coordinator.after-first-commit',
      'push.participant.after-prepare',
      'create.participant.before-apply',
      'delete.participant.after-apply',
    ]) {
      expect(FAILPOINT_NAMES).to.include(name);
    }
    for (const name of FAILPOINT_NAMES) expect(name).to.match(/^(create|delete|push)\.(coordinator|participant)\.[a-z-]+$/);
  });

  it('is off by default: every name answers undefined', () => {
    for (const name of FAILPOINT_NAMES) expect(failpointAction(name)).to.equal(undefined);
  });

  it('parses crash, error and delay(ms), several at once, ignoring blanks', () => {
    const parsed = parseFailpoints(' push.coordinator.after-votes=crash, create.participant.after-prepare=error,,delete.participant.after-apply=delay(250) ');
    expect([...parsed]).to.deep.equal([
      ['push.coordinator.after-votes', { kind: 'crash' }],
      ['create.participant.after-prepare', { kind: 'error' }],
      ['delete.participant.after-apply', { kind: 'delay', delayMs: 250 }],
    ]);
    expect(parseFailpoints('').size).to.equal(0);
    expect(parseFailpoints(undefined).size).to.equal(0);
  });

  for (const [spec, why] of [
    ['push.coordinator.after-vote=crash', /unknown failpoint 'push.coordinator.after-vote'.*after-votes/],
    ['push.participant.after-votes=crash', /unknown failpoint/],
    ['fetch.coordinator.after-votes=crash', /unknown failpoint/],
    ['push.coordinator.after-votes=explode', /unknown action 'explode'.*crash, error or delay\(ms\)/],
    ['push.coordinator.after-votes=delay(-1)', /unknown action/],
    ['push.coordinator.after-votes=delay(1.5)', /unknown action/],
    ['push.coordinator.after-votes=delay(600001)', /exceeds/],
    ['push.coordinator.after-votes', /not name=action/],
    ['=crash', /not name=action/],
    ['push.coordinator.after-votes=crash,push.coordinator.after-votes=error', /set twice/],
  ] as const) {
    it(`refuses FAILPOINTS='${spec}', saying why`, () => {
      expect(() => parseFailpoints(spec)).to.throw(why);
    });
  }

  it('a bad spec leaves the active set as it was', () => {
    configureFailpoints('push.coordinator.after-votes=error');
    expect(() => configureFailpoints('nonsense=crash')).to.throw(/unknown failpoint/);
    expect(failpointAction('push.coordinator.after-votes')).to.deep.equal({ kind: 'error' });
  });

  it('resolves at once when the failpoint is off, even if others are on', async () => {
    configureFailpoints('push.coordinator.after-votes=error');
    await hit('push.coordinator.after-decision');
  });

  it('error throws an Error with code failpoint, naming the point', async () => {
    configureFailpoints('push.participant.before-apply=error');
    const err = await hit('push.participant.before-apply').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(FailpointError);
    expect(err).to.be.instanceOf(Error);
    expect((err as FailpointError).code).to.equal('failpoint');
    expect((err as FailpointError).message).to.include('push.participant.before-apply');
  });

  it('delay(ms) resolves only once ms have passed on the clock it is given', async () => {
    const clock = new ManualClock();
    configureFailpoints('create.coordinator.before-prepare=delay(500)');
    let done = false;
    const waiting = hit('create.coordinator.before-prepare', clock).then(() => {
      done = true;
    });
    clock.advance(499);
    await Promise.resolve();
    expect(done).to.equal(false);
    expect(clock.pending).to.equal(1);
    clock.advance(1);
    await waiting;
    expect(done).to.equal(true);
  });

  it('crash kills the process with SIGKILL at the point: nothing after it runs', () => {
    const res = runChild('push.coordinator.after-decision=crash', 'push.coordinator.after-decision');
    expect(res.signal).to.equal('SIGKILL');
    expect(res.stdout).to.equal('');
    expect(res.stderr).to.include('failpoint push.coordinator.after-decision: crash');
  });

  it('a process with FAILPOINTS set passes points that are not set', () => {
    const res = runChild('push.coordinator.after-decision=crash', 'push.coordinator.after-votes');
    expect(res.status).to.equal(0);
    expect(res.stdout).to.equal('went on');
  });

  it('a bad FAILPOINTS stops the process at import with exit 2 and a clear message', () => {
    const res = runChild('push.coordinator.after-decison=crash', 'push.coordinator.after-decision');
    expect(res.status).to.equal(2);
    expect(res.stdout).to.equal('');
    expect(res.stderr).to.match(/^quorum-git: FAILPOINTS: unknown failpoint 'push.coordinator.after-decison'/);
  });
});
