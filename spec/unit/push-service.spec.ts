import { expect } from 'chai';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../../lib/base/logger.js';
import type { PeerClient } from '../../lib/cluster/peer-client.js';
import { PushService, type PushServiceOptions } from '../../lib/cluster/push-service.js';
import { RepoStore } from '../../lib/storage/repo-store.js';
import type { CoordinatorResult, TxnOp } from '../../lib/core/txn-core.js';
import type { TxnDriver } from '../../lib/cluster/txn-driver.js';

// The hook's verdict for each outcome of the push transaction, with the transaction itself faked:
// above all, a push that was decided but confirmed by fewer than W nodes is never answered "ok".

const A = 'http://a';
const B = 'http://b';
const C = 'http://c';
const OLD = '1'.repeat(40);
const NEW = '2'.repeat(40);

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined } as unknown as Logger;

describe('push service verdicts', () => {
  let root: string;
  let store: RepoStore;

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-push-service-'));
    store = new RepoStore(root);
    await fs.mkdir(store.repoPath('o/r'), { recursive: true });
    await fs.writeFile(path.join(store.repoPath('o/r'), 'HEAD'), 'ref: refs/heads/main\n');
  });
  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  /** A push service over a faked driver (`driver`: what the spec fakes beyond the repo's state), with this spec's store. */
  function serviceOver(driver: Record<string, unknown>, options: Partial<PushServiceOptions> = {}, localApplyTimeoutMs = 10): PushService {
    return new PushService({
      driver: {
        nodes: [A, B, C],
        participant: { isLive: () => true, repo: () => undefined, versionOf: () => ({ epoch: 1, generation: 4 }) },
        forgetOutcome: () => undefined,
        ...driver,
      } as unknown as TxnDriver,
      store,
      client: {} as PeerClient,
      logger: quiet,
      quorum: 2,
      limits: { maxRefsPerPush: 10, inlinePackMaxBytes: 1024, prepareMsPerMiB: 250, prepareMsPerRef: 2, pushLockTimeoutMs: 1000, localApplyTimeoutMs },
      newTxnId: () => 'txn-1',
      receivePackExit: () => undefined,
      ...options,
    });
  }

  /** A push service whose transaction ends in `result`; returns the verdict and the op it ran. */
  async function verdict(result: CoordinatorResult, packBytes = 0): Promise<{ ok: boolean; message: string; op: TxnOp | undefined; extraPrepareMs: number | undefined }> {
    let ran: TxnOp | undefined;
    let extraPrepareMs: number | undefined;
    const service = serviceOver({
      localOutcome: () => new Promise<boolean>(() => undefined),
      runTxn: async (op: TxnOp, _requestId: string, options: { extraPrepareMs?: number }) => {
        ran = op;
        extraPrepareMs = options.extraPrepareMs;
        return result;
      },
    });
    const quarantine = await fs.mkdtemp(path.join(root, 'quarantine-'));
    if (packBytes > 0) {
      await fs.mkdir(path.join(quarantine, 'pack'));
      await fs.writeFile(path.join(quarantine, 'pack', `pack-${'a'.repeat(40)}.pack`), Buffer.alloc(packBytes));
    }
    const answer = await service.preReceive({
      gitDir: store.repoPath('o/r'),
      quarantine,
      receivePackPid: undefined,
      body: `${OLD} ${NEW} refs/heads/main\n`,
      requestId: 'r',
    });
    return { ...answer, op: ran, extraPrepareMs };
  }

  it('says ok with how far the push got when a quorum confirmed it', async () => {
    let answer = await verdict({ outcome: 'committed', epoch: 1, generation: 5, confirmed: [A, B], applying: [], unanswered: [], behind: [C] });
    expect(answer.ok).to.equal(true);
    expect(answer.message).to.equal(`quorum-git: replicated to 2/3 nodes (quorum 2), generation 5\nquorum-git: behind, will catch up: ${C}`);
    answer = await verdict({ outcome: 'committed', epoch: 1, generation: 5, confirmed: [A, B], applying: [C], unanswered: [], behind: [] });
    expect(answer.message).to.equal(`quorum-git: replicated to 2/3 nodes (quorum 2), generation 5\nquorum-git: still applying: ${C}`);
    answer = await verdict({ outcome: 'committed', epoch: 1, generation: 5, confirmed: [A, B], applying: [], unanswered: [C], behind: [] });
    expect(answer.message).to.equal(`quorum-git: replicated to 2/3 nodes (quorum 2), generation 5\nquorum-git: not answered yet, will apply it or catch up: ${C}`);
    expect(answer.op).to.deep.include({ kind: 'push', repoId: 'o/r', base: { epoch: 1, generation: 4 } });
  });

  // Found by `npm run bench`: a 17 MiB pack shipped to two peers of a loaded node, and a push of 5,000
  // new branches, took longer than the 3 s prepare timeout, and were refused with both peers "unreachable".
  it('gives the prepare of a push time in proportion to the pack it streams to the peers and the refs it moves', async () => {
    const committed: CoordinatorResult = { outcome: 'committed', epoch: 1, generation: 5, confirmed: [A, B], applying: [], unanswered: [], behind: [] };
    // 4 MiB shipped (250 ms per MiB) and one ref moved (2 ms per ref).
    expect((await verdict(committed, 4 * 1024 * 1024)).extraPrepareMs).to.equal(1002);
    // A pack small enough to ride inside the prepare ships nothing ahead of it.
    expect((await verdict(committed, 512)).extraPrepareMs).to.equal(2);
  });

  it('fails a push decided but confirmed by fewer than W nodes, telling the user to fetch', async () => {
    const answer = await verdict({ outcome: 'committed', epoch: 1, generation: 5, confirmed: [A], applying: [], unanswered: [], behind: [B, C] });
    expect(answer.ok).to.equal(false);
    expect(answer.message).to.match(/could not be confirmed on a quorum of 2 of 3 nodes \(confirmed: http:\/\/a\); fetch to see whether it landed/);
  });

  it('names unreachable nodes apart from those that could not prepare', async () => {
    const answer = await verdict({ outcome: 'aborted', code: 'quorum_unreachable', failed: [B, C], unprepared: [C] });
    expect(answer.ok).to.equal(false);
    expect(answer.message).to.equal(`quorum-git: could not commit on a quorum of 2 of 3 nodes; unreachable: ${B}; could not prepare it: ${C}; nothing was changed`);
  });

  describe("our own refs, moved when receive-pack's proc-receive hook asks", () => {
    /** A push service whose driver applies our own replica once the self-commit gate opens, as the real one does. */
    function ownService(exit: Promise<void>, handsRefs = true): { service: PushService; gate: () => Promise<boolean> | undefined; quarantine: () => string | undefined } {
      let gate: Promise<boolean> | undefined;
      let quarantine: string | undefined;
      let gateGiven!: (gate: Promise<boolean>) => void;
      const given = new Promise<Promise<boolean>>((resolve) => (gateGiven = resolve));
      const service = serviceOver(
        {
          // Our own apply waits for the gate, then applies (true) or applies afresh, here failing (false).
          localOutcome: () => given.then((g) => g),
          runTxn: async (_op: TxnOp, _requestId: string, options: { selfCommitGate?: Promise<boolean>; quarantine?: string }) => {
            gate = options.selfCommitGate;
            quarantine = options.quarantine;
            gateGiven(gate!);
            return { outcome: 'committed', epoch: 1, generation: 5, confirmed: [A, B], applying: [], unanswered: [], behind: [] } as CoordinatorResult;
          },
        },
        { receivePackExit: (pid) => (pid === 42 ? exit : undefined), handsRefs: (pid) => handsRefs && pid === 42 },
        5000,
      );
      return { service, gate: () => gate, quarantine: () => quarantine };
    }
    const push = (service: PushService) =>
      service.preReceive({ gitDir: store.repoPath('o/r'), quarantine: '/q/objects/incoming-1', receivePackPid: 42, body: `${OLD} ${NEW} refs/heads/main\n`, requestId: 'r' });

    it('opens the gate for the prepared transaction and answers ok for each ref of the push', async () => {
      const { service, gate, quarantine } = ownService(new Promise<void>(() => undefined));
      expect((await push(service)).ok).to.equal(true);
      expect(quarantine()).to.equal('/q/objects/incoming-1');
      expect(await service.procReceive(42, [`${OLD} ${NEW} refs/heads/main`])).to.deep.equal(['ok refs/heads/main']);
      expect(await gate()).to.equal(true);
    });

    it('refuses a ref that is not the push\'s update, and a receive-pack it holds no push for', async () => {
      const { service } = ownService(new Promise<void>(() => undefined));
      await push(service);
      expect(await service.procReceive(42, [`${OLD} ${NEW} refs/heads/main`, `${OLD} ${NEW} refs/heads/other`])).to.deep.equal([
        'ok refs/heads/main',
        "ng refs/heads/other quorum-git: not an update of this push's transaction (txn-1)",
      ]);
      expect(await service.procReceive(43, [`${OLD} ${NEW} refs/heads/main`])).to.deep.equal([
        'ng refs/heads/main quorum-git: this push has no transaction committed on this node; nothing was changed here',
      ]);
    });

    it('leaves a receive-pack that moves its refs itself (a push of few refs) to do so: no quarantine for our prepare, the gate closes at its exit', async () => {
      let exited!: () => void;
      const { service, gate, quarantine } = ownService(new Promise<void>((r) => (exited = r)), false);
      expect((await push(service)).ok).to.equal(true);
      expect(quarantine()).to.equal(undefined);
      exited();
      expect(await gate()).to.equal(false);
      expect(await service.procReceive(42, [`${OLD} ${NEW} refs/heads/main`])).to.deep.equal([
        'ng refs/heads/main quorum-git: this push has no transaction committed on this node; nothing was changed here',
      ]);
    });

    it('lets a receive-pack that exits without asking close the gate: the prepared transaction is not committed', async () => {
      let exited!: () => void;
      const { service, gate } = ownService(new Promise<void>((r) => (exited = r)));
      await push(service);
      exited();
      expect(await gate()).to.equal(false);
      expect(await service.procReceive(42, [`${OLD} ${NEW} refs/heads/main`])).to.deep.equal([
        'ng refs/heads/main quorum-git: this push has no transaction committed on this node; nothing was changed here',
      ]);
    });
  });
});
