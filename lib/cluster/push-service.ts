import { existsSync, promises as fs, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { sleep, systemClock, type Clock } from '../base/clock.js';
import { quarantinePackFiles, readHead, readRefs } from '../git/git-refs.js';
import { runGit } from '../git/git.js';
import { serveProcReceive } from '../git/proc-receive.js';
import { KeyedLock, LockTimeoutError } from '../base/keyed-lock.js';
import type { Logger } from '../base/logger.js';
import type { PackShipment, TxnTimer } from '../base/metrics.js';
import type { PackTee } from './pack-tee.js';
import type { PeerClient } from './peer-client.js';
import { isPrivateRef, refNameProblem } from '../core/repo-id.js';
import type { RepoStore } from '../storage/repo-store.js';
import type { RepoSettings } from '../core/repo-settings.js';
import { ZERO_OID, type NodeId, type RefUpdate, type TxnOp } from '../core/txn-core.js';
import type { TxnDriver } from './txn-driver.js';

// The replication hooks' server side. git receive-pack runs our pre-receive hook with the ref updates
// and its quarantine; the hook posts them here and exits with our verdict. Here the push becomes a
// two-phase commit: the quarantined pack (already indexed and checked by receive-pack) is shipped to
// every peer, each replica (this one included) checks that it is at the same version and its refs
// still hold the old values, locks them with their new values written (one update-ref transaction)
// and logs `prepared`; on a quorum the decision is logged, peers move their refs, and only then does
// the hook exit 0. receive-pack then moves the pushed objects into our repo and, for a push of many
// refs, runs our proc-receive hook instead of moving any ref itself: it reaches us (procReceive), our
// own prepared transaction is committed, and the client hears "ok" for each ref; a push of few refs,
// receive-pack moves itself, and our own replica only checked at its prepare that no stale lock is in
// the way. A non-zero pre-receive exit gives the client `! [remote rejected]` and nothing moves.

export interface PushLimits {
  maxRefsPerPush: number;
  /** Packs up to this size travel inside the prepare message instead of a streamed upload. */
  inlinePackMaxBytes: number;
  /**
   * Time added to the prepare timeout per MiB of a pack streamed to the peers
   * (PREPARE_TIMEOUT_PER_MIB_MS): the uploads and the peers' staging run inside the prepare's window.
   */
  prepareMsPerMiB: number;
  /** Time added to the prepare timeout per ref the push updates (PREPARE_TIMEOUT_PER_REF_MS): each peer locks and reads them all. */
  prepareMsPerRef: number;
  pushLockTimeoutMs: number;
  /** How long a finished push keeps the repo while our own replica applies it. */
  localApplyTimeoutMs: number;
}

export interface HookRequest {
  gitDir: string;
  quarantine: string;
  receivePackPid: number | undefined;
  body: string;
  requestId: string;
}

/** A push whose pre-receive hook this node answered, waiting for its proc-receive hook (by receive-pack pid). */
interface OwnCommit {
  txnId: string;
  updates: readonly RefUpdate[];
  /** receive-pack moved the pushed objects into the repo: our own commit may go ahead. */
  objectsInPlace: () => void;
  /** Resolves once our own replica applied the push (true) or did not (false). */
  applied: Promise<boolean>;
}

export interface HookVerdict {
  ok: boolean;
  message: string;
  /** The push's transaction, once it had one (for the audit line). */
  txnId?: string;
}

export interface PushServiceOptions {
  driver: TxnDriver;
  store: RepoStore;
  client: PeerClient;
  logger: Logger;
  quorum: number;
  limits: PushLimits;
  newTxnId: () => string;
  /** Resolves when the receive-pack process with this pid has exited (undefined if not ours). */
  receivePackExit: (pid: number) => Promise<void> | undefined;
  /** Whether receive-pack `pid` hands its refs to the node through the proc-receive hook (a push of many refs; lib/git/hooks.ts handRefsToNode). */
  handsRefs?: (pid: number) => boolean;
  /** The streams of the pack receive-pack `pid` took in, sent to the peers as it came (none: uploaded after). */
  packTee?: (pid: number) => PackTee | undefined;
  /** Runs the push's transaction and records it (the node's metrics); default: just runs it. */
  timeTxn?: TxnTimer;
  /** Counts a pack shipped to one peer (the node's metrics). */
  packShipped?: (how: PackShipment) => void;
  /** The node's clock (default the system's); times the push lock's wait and the local apply's. */
  clock?: Clock;
}

/** What a proc-receive exchange may take beyond the wait for our own apply. */
const PROC_RECEIVE_SLACK_MS = 10_000;

const UPDATE_LINE = /^([0-9a-f]{40}|[0-9a-f]{64}) ([0-9a-f]{40}|[0-9a-f]{64}) (refs\/\S+|HEAD)$/;

export function parseUpdates(body: string, maxRefs: number): RefUpdate[] {
  const updates: RefUpdate[] = [];
  for (const line of body.split('\n')) {
    if (line === '') continue;
    const m = UPDATE_LINE.exec(line);
    if (!m) throw new Error(`malformed ref update line: ${JSON.stringify(line.slice(0, 200))}`);
    const problem = refNameProblem(m[3]!);
    if (problem !== undefined) throw new Error(`refusing ${JSON.stringify(m[3]!.slice(0, 200))}: ${problem}; nothing was changed`);
    updates.push({ old: m[1]!, new: m[2]!, ref: m[3]! });
    if (updates.length > maxRefs) throw new Error(`a push may update at most ${maxRefs} refs`);
  }
  return updates;
}

/**
 * Where HEAD must point after a push: hosting services point a repo whose HEAD names no branch
 * (a first push of `master` into a repo made with `main`) at a pushed branch.
 */
export function headAfterPush(head: string, refsBefore: Readonly<Record<string, string>>, updates: readonly RefUpdate[]): string | undefined {
  const after = new Set(Object.keys(refsBefore));
  for (const u of updates) {
    if (u.new === ZERO_OID) after.delete(u.ref);
    else after.add(u.ref);
  }
  if (after.has(head) || refsBefore[head] !== undefined) return undefined;
  const created = updates.filter((u) => u.new !== ZERO_OID && u.ref.startsWith('refs/heads/')).map((u) => u.ref);
  if (created.length === 0) return undefined;
  return created.find((r) => r === 'refs/heads/main') ?? created.find((r) => r === 'refs/heads/master') ?? [...created].sort()[0];
}

/**
 * Why the repo's protected branches refuse this push, or undefined: a protected branch may be
 * created and moved fast-forward, never deleted nor moved to a commit that does not contain its old
 * one (a force push). Ancestry is checked by git in the push's quarantine (the new objects are there
 * until the hook answers, the old ones in the repo). Run by the coordinator's hook, which every node
 * can be, with the settings every node holds alike; the participants refuse a deletion again at
 * prepare (lib/core/txn-core.ts), where there are no objects to check ancestry with.
 */
export async function protectedBranchProblem(
  updates: readonly RefUpdate[],
  settings: RepoSettings | undefined,
  repoPath: string,
  quarantine: string,
): Promise<string | undefined> {
  if (!settings || settings.protectedBranches.length === 0) return undefined;
  for (const u of updates) {
    if (!settings.protectedBranches.includes(u.ref) || u.old === ZERO_OID) continue;
    if (u.new === ZERO_OID) return `quorum-git: ${u.ref} is a protected branch: it cannot be deleted (repo settings: protected_branches); nothing was changed`;
    const env: NodeJS.ProcessEnv = { ...process.env, GIT_DIR: repoPath };
    // No quarantine (a push that brought no objects): git would not even find the repo through it.
    if (quarantine !== '' && existsSync(quarantine)) Object.assign(env, { GIT_OBJECT_DIRECTORY: quarantine, GIT_ALTERNATE_OBJECT_DIRECTORIES: path.join(repoPath, 'objects') });
    try {
      await runGit(['merge-base', '--is-ancestor', u.old, u.new], { env });
    } catch (err) {
      // Exit status 1: not an ancestor. Anything else (objects missing, git failing) refuses too:
      // a protected branch is never moved on a guess.
      const status = ((err as Error).cause as { code?: unknown } | undefined)?.code;
      if (status === 1) return `quorum-git: ${u.ref} is a protected branch: it cannot be moved non-fast-forward (force push) (repo settings: protected_branches); nothing was changed`;
      return `quorum-git: ${u.ref} is a protected branch and whether this push is a fast-forward could not be checked; nothing was changed`;
    }
  }
  return undefined;
}

export class PushService {
  private readonly options: PushServiceOptions;
  private readonly clock: Clock;
  private readonly locks: KeyedLock;
  private readonly ownCommits = new Map<number, OwnCommit>();

  constructor(options: PushServiceOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
    this.locks = new KeyedLock(this.clock);
  }

  /**
   * Waits until no push to the repo is in flight here (the last one's own commit included): a pusher
   * right behind another must be shown the refs that push left, not be sent away as "behind".
   */
  async waitIdle(repoId: string): Promise<void> {
    try {
      const release = await this.locks.acquire(repoId, this.options.limits.pushLockTimeoutMs);
      release();
    } catch (err) {
      if (!(err instanceof LockTimeoutError)) throw err;
    }
  }

  async preReceive(request: HookRequest): Promise<HookVerdict> {
    const { store, driver, logger, limits } = this.options;
    const repoId = store.repoIdOf(request.gitDir);
    if (repoId === undefined || !driver.participant.isLive(repoId)) return { ok: false, message: 'quorum-git: unknown repository' };
    let updates: RefUpdate[];
    try {
      updates = parseUpdates(request.body, limits.maxRefsPerPush);
    } catch (err) {
      return { ok: false, message: `quorum-git: ${(err as Error).message}` };
    }
    if (updates.length === 0) return { ok: true, message: '' };

    let release: () => void;
    try {
      release = await this.locks.acquire(repoId, limits.pushLockTimeoutMs);
    } catch (err) {
      if (err instanceof LockTimeoutError) return { ok: false, message: 'quorum-git: another push to this repository is taking too long; try again' };
      throw err;
    }
    let releaseLater = false;
    try {
      const repoPath = store.repoPath(repoId);
      const entry = driver.participant.repo(repoId);
      const refused = await protectedBranchProblem(updates, entry?.settings, repoPath, request.quarantine);
      if (refused !== undefined) return { ok: false, message: refused };
      const [head, quarantined] = await Promise.all([readHead(repoPath), quarantinePackFiles(request.quarantine)]);
      // The refs are read only when HEAD might be left naming no branch (rare: a first push).
      const mayMoveHead = !updates.some((u) => u.ref === head) && updates.some((u) => u.new !== ZERO_OID && u.ref.startsWith('refs/heads/'));
      const newHead = mayMoveHead ? headAfterPush(head, await readRefs(repoPath), updates) : undefined;
      const op: TxnOp = {
        kind: 'push',
        repoId,
        updates,
        base: driver.participant.versionOf(repoId),
        settingsVersion: entry?.settingsVersion ?? 0,
        ...(newHead === undefined ? {} : { head: newHead }),
      };
      const txnId = this.options.newTxnId();
      // A small pack is read now and rides inside the prepares. A large one streams to each peer
      // ahead of its prepare; receive-pack deletes its quarantine as soon as the hook answers, which
      // can be before a slow peer has its copy, so it is shipped from hard links that live until
      // every upload is over.
      const inline = readInline(quarantined, limits.inlinePackMaxBytes);
      const packFiles = inline ? [] : await store.linkOutgoing(txnId, quarantined);
      // A pack of 17 MiB (a real project's history) shipped to two peers of a loaded node, and a push
      // of 5,000 new branches (each peer locks and reads every ref), took longer than the 3 s prepare
      // timeout and were refused as "unreachable": the timeout grows with what is shipped and moved.
      const shippedBytes = (await Promise.all(packFiles.map((f) => fs.stat(f).then((st) => st.size, () => 0)))).reduce((a, b) => a + b, 0);
      const extraPrepareMs = Math.ceil((shippedBytes / (1024 * 1024)) * limits.prepareMsPerMiB + updates.length * limits.prepareMsPerRef);
      const uploads: Promise<unknown>[] = [];
      const exit = request.receivePackPid === undefined ? undefined : this.options.receivePackExit(request.receivePackPid);
      const tee = request.receivePackPid === undefined ? undefined : this.options.packTee?.(request.receivePackPid);
      const localApplied = driver.localOutcome(txnId);
      // Our own commit waits for receive-pack. One that moves the refs itself (fewer than
      // BULK_REF_UPDATES): for its exit, then the push is applied afresh (refs already moved are left
      // alone). One that hands them to the node: for its proc-receive hook (the objects are in the
      // repo then), to commit the ref transaction prepared with our vote; or for its exit without
      // one (the transaction is dropped and the push applied afresh, which checks the objects).
      const pid = request.receivePackPid;
      const handsRefs = exit !== undefined && pid !== undefined && this.options.handsRefs?.(pid) === true;
      let selfCommitGate = exit === undefined ? Promise.resolve(false) : exit.then(() => false);
      if (handsRefs) {
        let objectsInPlace!: () => void;
        const inPlace = new Promise<boolean>((resolve) => (objectsInPlace = () => resolve(true)));
        selfCommitGate = Promise.race([inPlace, exit.then(() => false)]);
        const own: OwnCommit = { txnId, updates, objectsInPlace, applied: localApplied };
        this.ownCommits.set(pid, own);
        void exit.then(() => {
          if (this.ownCommits.get(pid) === own) this.ownCommits.delete(pid);
        });
      }
      const timeTxn = this.options.timeTxn ?? ((_kind, run) => run());
      const result = await timeTxn('push', () => driver.runTxn(op, request.requestId, {
        txnId,
        extraPrepareMs,
        selfCommitGate,
        ...(handsRefs ? { quarantine: request.quarantine } : {}),
        beforePrepare: async (peer: NodeId) => {
          // A small pack rides inside the prepare (one request less per peer); a large one streams ahead.
          if (inline) {
            this.options.packShipped?.('inline');
            return inline;
          }
          const upload = Promise.all(packFiles.map((file) => this.shipPackFile(peer, txnId, file, tee, request.requestId)));
          uploads.push(upload);
          await upload;
        },
      }));
      const streamedAhead = tee?.adopted ?? 0;
      if (packFiles.length > 0) void Promise.allSettled(uploads).then(() => store.dropOutgoing(txnId));
      const total = driver.nodes.length;
      if (result.outcome === 'committed' && result.confirmed.length < this.options.quorum) {
        // Decided, but the peers that voted yes could not apply it before the resends ran out. Saying
        // "ok" now would acknowledge a push held by fewer than W nodes, so git is told it failed:
        // receive-pack then leaves our refs alone, and the push is not acknowledged (a peer that did
        // apply it may still spread it by catch-up, so the client should fetch before pushing again).
        logger.error('push decided but not confirmed on a quorum', { txn_id: txnId, request_id: request.requestId, repo_id: repoId, confirmed: result.confirmed, unanswered: result.unanswered, behind: result.behind });
        return {
          ok: false,
          txnId,
          message: `quorum-git: the push could not be confirmed on a quorum of ${this.options.quorum} of ${total} nodes (confirmed: ${result.confirmed.join(', ')}); fetch to see whether it landed, then push again`,
        };
      }
      if (result.outcome === 'committed') {
        releaseLater = true;
        const timeout = sleep(this.clock, limits.localApplyTimeoutMs);
        void Promise.race([localApplied, timeout]).then(release);
        logger.info('push committed', { txn_id: txnId, request_id: request.requestId, repo_id: repoId, refs: updates.length, generation: result.generation, confirmed: result.confirmed.length, streamed_ahead: streamedAhead });
        const lines = [`quorum-git: replicated to ${result.confirmed.length}/${total} nodes (quorum ${this.options.quorum}), generation ${result.generation}`];
        if (result.applying.length > 0) lines.push(`quorum-git: still applying: ${result.applying.join(', ')}`);
        if (result.unanswered.length > 0) lines.push(`quorum-git: not answered yet, will apply it or catch up: ${result.unanswered.join(', ')}`);
        if (result.behind.length > 0) lines.push(`quorum-git: behind, will catch up: ${result.behind.join(', ')}`);
        return { ok: true, message: lines.join('\n'), txnId };
      }
      driver.forgetOutcome(txnId);
      logger.warn('push rejected', { txn_id: txnId, request_id: request.requestId, repo_id: repoId, code: result.code, failed: result.failed, detail: result.detail });
      return { ok: false, message: rejectionMessage(result.code, result.failed, result.unprepared ?? [], result.detail, this.options.quorum, total), txnId };
    } finally {
      if (!releaseLater) release();
    }
  }

  /**
   * Speaks the proc-receive protocol with receive-pack `receivePackPid` on its hook's upgraded
   * connection (lib/git/proc-receive.ts), answering with procReceive.
   */
  serveProcReceive(receivePackPid: number | undefined, socket: Duplex, head: Buffer): Promise<void> {
    const { limits } = this.options;
    return serveProcReceive(socket, head, (commands) => this.procReceive(receivePackPid, commands), {
      clock: this.clock,
      // procReceive waits at most localApplyTimeoutMs for our own apply; the rest is a few pkt-lines.
      timeoutMs: limits.localApplyTimeoutMs + PROC_RECEIVE_SLACK_MS,
      maxCommands: limits.maxRefsPerPush,
    });
  }

  /**
   * The proc-receive hook of receive-pack `receivePackPid`: the pushed objects are in the repo, and
   * receive-pack asks us to move the refs of `commands` ("<old> <new> <ref>"). Our own ref
   * transaction for the push, prepared with the vote, is committed (the driver's apply), and each
   * ref gets git's "ok <ref>" or "ng <ref> <reason>". A push this node holds no committed transaction
   * for moves nothing.
   */
  async procReceive(receivePackPid: number | undefined, commands: readonly string[]): Promise<string[]> {
    const { limits } = this.options;
    const updates = parseUpdates(commands.join('\n'), limits.maxRefsPerPush);
    const own = receivePackPid === undefined ? undefined : this.ownCommits.get(receivePackPid);
    if (own === undefined) return updates.map((u) => `ng ${u.ref} quorum-git: this push has no transaction committed on this node; nothing was changed here`);
    this.ownCommits.delete(receivePackPid!);
    own.objectsInPlace();
    const applied = await Promise.race([own.applied, sleep(this.clock, limits.localApplyTimeoutMs).then(() => false)]);
    const committed = new Map(own.updates.map((u) => [u.ref, u]));
    return updates.map((u) => {
      const c = committed.get(u.ref);
      if (c === undefined || c.old !== u.old || c.new !== u.new) return `ng ${u.ref} quorum-git: not an update of this push's transaction (${own.txnId})`;
      if (!applied) return `ng ${u.ref} quorum-git: committed on a quorum, but not moved on this node yet (it catches up); fetch to see it`;
      return `ok ${u.ref}`;
    });
  }

  /**
   * Gets one file of the push's pack to `peer` before its prepare: the pack itself, if the peer was
   * streamed it while the client sent it and holds it whole under this name, is taken from there;
   * otherwise (an index, a pack receive-pack completed or that the peer missed) it is uploaded.
   */
  private async shipPackFile(peer: NodeId, txnId: string, file: string, tee: PackTee | undefined, requestId: string): Promise<void> {
    const { client, logger } = this.options;
    if (tee !== undefined && file.endsWith('.pack')) {
      const stageId = await tee.staged(peer);
      if (stageId !== undefined) {
        const adopted = await client.adoptStagedPack(peer, txnId, file, stageId, requestId).catch((err: Error) => {
          logger.debug('a peer could not take its streamed pack; uploading it', { peer, txn_id: txnId, err: err.message });
          return false;
        });
        if (adopted) {
          tee.markAdopted(peer);
          this.options.packShipped?.('streamed');
          return;
        }
      }
    }
    await client.uploadPackFile(peer, txnId, file, requestId);
    if (file.endsWith('.pack')) this.options.packShipped?.('uploaded');
  }
}

/** A small pack's files as base64, read at once (synchronously: they are small), or undefined if too big. */
function readInline(files: readonly string[], maxBytes: number): Record<string, string> | undefined {
  if (files.length === 0) return undefined;
  const size = files.reduce((sum, f) => sum + statSync(f).size, 0);
  if (size > maxBytes) return undefined;
  return Object.fromEntries(files.map((f) => [path.basename(f), readFileSync(f).toString('base64')]));
}

function rejectionMessage(code: string, failed: NodeId[], unprepared: NodeId[], detail: string | undefined, quorum: number, total: number): string {
  switch (code) {
    case 'ref_conflict':
      return `quorum-git: ${detail ?? 'a ref'} was updated by another push since you fetched; fetch, merge or rebase, and push again`;
    case 'ref_name_clash':
      return `quorum-git: ${detail ?? 'two refs'} cannot both exist (a ref name cannot also be a directory of refs), nor can one push replace one with the other; push a deletion on its own first, or pick another name; nothing was changed`;
    case 'protected_ref':
      return `quorum-git: ${detail ?? 'a ref'} is a protected branch: it cannot be deleted (repo settings: protected_branches); nothing was changed`;
    case 'stale':
      return `quorum-git: the repository is at a newer version on other nodes than the one this push was based on (${detail ?? 'versions differ'}); nothing was changed; fetch, then push again`;
    case 'repo_busy':
      return 'quorum-git: another change to this repository is in progress; nothing was changed, push again';
    default: {
      // A node that answered but could not stage the push (its disk, a ref lock left by a crashed git)
      // is named apart from those that did not answer; its own log says why.
      const unreachable = failed.filter((n) => !unprepared.includes(n));
      const staging = unprepared.length > 0 ? `; could not prepare it: ${unprepared.join(', ')}` : '';
      return `quorum-git: could not commit on a quorum of ${quorum} of ${total} nodes; unreachable: ${unreachable.join(', ') || 'none'}${staging}; nothing was changed`;
    }
  }
}
