import { expect } from 'chai';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TxnLog } from '../../lib/txn-log.js';

describe('TxnLog', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-log-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('replays concurrent appends in the order they were made', async () => {
    const log = new TxnLog(dir);
    await log.open();
    await Promise.all(Array.from({ length: 50 }, (_, i) => log.append({ t: 'refused', txnId: `t${i}` })));
    await log.close();
    const entries = await new TxnLog(dir).replay();
    expect(entries.map((e) => (e as { txnId: string }).txnId)).to.deep.equal(Array.from({ length: 50 }, (_, i) => `t${i}`));
  });

  it('drops a torn last line (never acknowledged) and keeps appending after it', async () => {
    await fs.writeFile(path.join(dir, 'txn.log'), '{"t":"refused","txnId":"a"}\n{"t":"refu');
    const log = new TxnLog(dir);
    expect(await log.replay()).to.deep.equal([{ t: 'refused', txnId: 'a' }]);
    await log.open();
    await log.append({ t: 'refused', txnId: 'b' });
    await log.close();
    expect(await new TxnLog(dir).replay()).to.deep.equal([
      { t: 'refused', txnId: 'a' },
      { t: 'refused', txnId: 'b' },
    ]);
  });

  it('refuses to start on a corrupt line in the middle', async () => {
    await fs.writeFile(path.join(dir, 'txn.log'), '{"t":"refused","txnId":"a"}\ngarbage\n{"t":"refused","txnId":"b"}\n');
    let error: Error | undefined;
    await new TxnLog(dir).replay().catch((err: Error) => (error = err));
    expect(error?.message).to.match(/line 2 is corrupt/);
  });
});
