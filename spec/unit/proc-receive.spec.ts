import { expect } from 'chai';
import { Duplex } from 'node:stream';
import { ManualClock } from '../support/manual-clock.js';
import { pktLine } from '../../lib/git/pkt-line.js';
import { serveProcReceive } from '../../lib/git/proc-receive.js';

// The node's side of git's proc-receive hook protocol (githooks(5)), spoken over the connection the
// hook relays: the version exchange (receive-pack's line carries a NUL and capabilities), the
// commands, and one report line per command; anything else ends the exchange, with no report.

/** A connection whose far end is the test: what the node writes is collected, what the test writes is read by the node. */
function pair(): { socket: Duplex; written: () => string; send: (bytes: string | Buffer) => void; end: () => void } {
  const chunks: Buffer[] = [];
  const socket = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk);
      done();
    },
  });
  return {
    socket,
    written: () => Buffer.concat(chunks).toString('latin1'),
    send: (bytes) => socket.push(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes),
    end: () => socket.push(null),
  };
}

const OLD = '0'.repeat(40);
const NEW = 'a'.repeat(40);
const flush = '0000';
const version = (caps?: string): Buffer => pktLine(caps === undefined ? 'version=1\n' : `version=1\0${caps}\n`);
const options = (clock = new ManualClock(0)) => ({ clock, timeoutMs: 5000, maxCommands: 3 });

describe('proc-receive protocol (the node speaking for the hook)', () => {
  it('answers the version, then one report line per command, then a flush, and ends the connection', async () => {
    const { socket, written, send } = pair();
    let seen: string[] = [];
    const served = serveProcReceive(socket, Buffer.alloc(0), async (commands) => {
      seen = commands;
      return commands.map((c) => `ok ${c.split(' ')[2]}`);
    }, options());
    send(Buffer.concat([version('atomic push-options'), Buffer.from(flush)]));
    await new Promise((r) => setImmediate(r));
    expect(written()).to.equal(`000eversion=1\n${flush}`);
    send(Buffer.concat([pktLine(`${OLD} ${NEW} refs/heads/main`), pktLine(`${NEW} ${OLD} refs/tags/v1`), Buffer.from(flush)]));
    await served;
    expect(seen).to.deep.equal([`${OLD} ${NEW} refs/heads/main`, `${NEW} ${OLD} refs/tags/v1`]);
    expect(written()).to.equal(`000eversion=1\n${flush}0017ok refs/heads/main\n0014ok refs/tags/v1\n${flush}`);
    expect(socket.writableEnded).to.equal(true);
  });

  it('takes bytes that came with the upgrade, and a version line without capabilities', async () => {
    const { socket, written, send } = pair();
    const head = Buffer.concat([version(), Buffer.from(flush), pktLine(`${OLD} ${NEW} refs/heads/a`)]);
    const served = serveProcReceive(socket, head, async (commands) => commands.map((c) => `ng ${c.split(' ')[2]} refused`), options());
    send(flush);
    await served;
    expect(written()).to.equal(`000eversion=1\n${flush}001cng refs/heads/a refused\n${flush}`);
  });

  it('ends the exchange, reporting nothing, on another version, a bad length, too many commands or bytes, or a connection cut off', async () => {
    const cases: { bytes: Buffer; end?: boolean; err: RegExp }[] = [
      { bytes: Buffer.concat([pktLine('version=2\n'), Buffer.from(flush)]), err: /not version=1/ },
      { bytes: Buffer.from('zzzz'), err: /not a pkt-line length/ },
      { bytes: Buffer.from('0003'), err: /bad pkt-line length/ },
      {
        bytes: Buffer.concat([version(), Buffer.from(flush), ...[1, 2, 3, 4].map((i) => pktLine(`${OLD} ${NEW} refs/heads/b${i}`)), Buffer.from(flush)]),
        err: /more than 3 ref updates/,
      },
      { bytes: Buffer.concat([version(), Buffer.from(flush), pktLine(`${OLD} ${NEW} refs/heads/c`)]), end: true, err: /ended the exchange early/ },
      // 3 commands may take 1024 + 3 x 300 bytes in all.
      { bytes: Buffer.concat([version(), Buffer.from(flush), pktLine(`${OLD} ${NEW} refs/heads/${'d'.repeat(2000)}`)]), err: /over 1924 bytes/ },
    ];
    for (const c of cases) {
      const { socket, written, send, end } = pair();
      let reported = false;
      const served = serveProcReceive(socket, Buffer.alloc(0), async () => {
        reported = true;
        return [];
      }, options());
      send(c.bytes);
      if (c.end) end();
      const err = await served.then(() => undefined, (e: Error) => e);
      expect(String(err), c.bytes.toString('latin1').slice(0, 20)).to.match(c.err);
      expect(reported).to.equal(false);
      expect(written()).to.not.match(/ok |ng /);
      expect(socket.destroyed).to.equal(true);
    }
  });

  it('gives up on an exchange that outlasts its timeout', async () => {
    const clock = new ManualClock(0);
    const { socket, send } = pair();
    const served = serveProcReceive(socket, Buffer.alloc(0), async () => [], options(clock));
    send(version());
    await new Promise((r) => setImmediate(r));
    clock.advance(5000);
    const err = await served.then(() => undefined, (e: Error) => e);
    expect(String(err)).to.match(/took over 5000 ms/);
    expect(socket.destroyed).to.equal(true);
  });
});
