import { createHash, timingSafeEqual } from 'node:crypto';
import { createWriteStream, promises as fsp } from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { Transform, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Config } from '../base/config.js';
import { SECRET_HEADER } from '../base/headers.js';
import type { Logger } from '../base/logger.js';
import { repoDigest } from '../cluster/catch-up.js';
import { commitEpochProblem, parseMembership, parseTxnMessage } from '../cluster/internal-messages.js';
import { PackTrailerCheck } from '../cluster/pack-tee.js';
import { PROC_RECEIVE_UPGRADE } from '../git/proc-receive.js';
import { NODE_HEADER, STAGED_PACK_HEADER } from '../cluster/peer-client.js';
import type { PushService } from '../cluster/push-service.js';
import type { TxnDriver } from '../cluster/txn-driver.js';
import { QuorumGitError } from '../core/errors.js';
import { STAGE_ID } from '../core/repo-id.js';
import { REF_UPDATE_BYTES, compareVersions, type NodeId, type TxnMessage } from '../core/txn-core.js';
import type { RepoStore } from '../storage/repo-store.js';
import { auditPush, auditUpdates, type AuditWho } from './audit.js';
import type { GitHttp } from './git-http.js';
import { parseJson, readBody, send } from './io.js';
import type { Route } from './router.js';

// The internal API (/internal/...): what peers send each other (2PC messages and queries, a push's
// pack files, catalogs, a replica's state for read checks and catch-up), what the pre-receive hook
// posts, and what the operator tools read. Every request carries the cluster secret; those that
// change state name their sender, which must be a configured peer.

export type InternalRoute = Extract<Route, { kind: `internal${string}` }>;

export function isPeer(req: http.IncomingMessage, clusterSecret: string): boolean {
  // Fixed-length digests: comparing the raw values would end early on a length mismatch and so
  // tell an attacker the secret's length.
  const given = createHash('sha256').update(String(req.headers[SECRET_HEADER] ?? '')).digest();
  const expected = createHash('sha256').update(clusterSecret).digest();
  return timingSafeEqual(given, expected);
}

/** This node's state of a repo, as read checks, catch-up and `verify` ask for it. */
export async function repoState(
  driver: TxnDriver,
  store: RepoStore,
  repoId: string,
  want: { refs?: boolean; digest?: boolean },
): Promise<Record<string, unknown> & { live: boolean; epoch: number; generation: number }> {
  const entry = driver.participant.repo(repoId);
  const live = entry?.state === 'live';
  // A read check is told the version of a final commit still being applied here (a reader served
  // here waits for it): a push acknowledged a moment ago is never reported as not there yet.
  const reported = live ? driver.participant.readVersion(repoId) : { epoch: entry?.epoch ?? 0, generation: entry?.generation ?? 0 };
  const state = { repo_id: repoId, live, ...reported };
  if ((!want.refs && !want.digest) || !live) return state;
  // Mid-transaction, refs and version can disagree for a moment (the coordinator's refs move when
  // receive-pack's proc-receive hook asks, before we log the commit): no refs or digest then, or a
  // catch-up could label newer refs with an older version. The caller tries again on its next round.
  if (driver.participant.lockedBy(repoId) !== undefined) return state;
  // Read under the repo's queue so refs and version belong together.
  const { version, refs, head, digest } = await repoDigest(driver, store, repoId, want.refs ? 'refs' : 'digest');
  const participant = driver.participant;
  if (participant.lockedBy(repoId) !== undefined || compareVersions(version, participant.versionOf(repoId)) !== 0) return state;
  return { ...state, ...version, digest, ...(want.refs ? { refs, head } : {}) };
}

export interface InternalApiOptions {
  config: Pick<Config, 'serverId' | 'selfUrl' | 'clusterSecret' | 'peerUrls' | 'quorum' | 'maxRefsPerPush' | 'maxPackBytes'>;
  /** Packs up to this size ride inside the prepare message (the prepare's body limit allows for them). */
  inlinePackMaxBytes: number;
  driver: TxnDriver;
  store: RepoStore;
  gitHttp: Pick<GitHttp, 'markHookStarted' | 'receivePackOrigin'>;
  pushService: Pick<PushService, 'preReceive' | 'serveProcReceive'>;
  logger: Logger;
  /** The first recovery round since start has run (for `status`). */
  recovered: () => boolean;
}

export class InternalApi {
  private readonly options: InternalApiOptions;

  constructor(options: InternalApiOptions) {
    this.options = options;
  }

  authorizePeer(req: http.IncomingMessage): void {
    if (!isPeer(req, this.options.config.clusterSecret)) throw new QuorumGitError('unauthorized', 'internal API: missing or wrong cluster secret');
  }

  /**
   * The configured peer an internal request says it comes from (NODE_HEADER); required when
   * `required`. A node the operator declared dead for good is fenced: none of its messages is answered.
   */
  senderOf(req: http.IncomingMessage, required: boolean): NodeId | undefined {
    const named = req.headers[NODE_HEADER];
    if (named === undefined && !required) return undefined;
    if (typeof named !== 'string' || !this.options.config.peerUrls.includes(named)) {
      throw new QuorumGitError('unknown_peer', `internal API: ${NODE_HEADER} must name one of this node's peers (PEER_URLS)`);
    }
    if (this.options.driver.participant.isDead(named)) {
      throw new QuorumGitError('node_declared_dead', `${named} was declared dead for good: it may rejoin only on an empty data dir, once readmitted (quorum-git node readmit)`);
    }
    return named;
  }

  /** Serves an internal route; the app has checked the secret and the sender (`sender`, for 2PC messages). */
  async serve(target: InternalRoute, req: http.IncomingMessage, res: http.ServerResponse, sender: NodeId | undefined, requestId: string, log: Logger): Promise<void> {
    const { config, driver } = this.options;
    switch (target.kind) {
      case 'internalPing':
        return send(res, 200, { server_id: config.serverId, url: config.selfUrl });
      case 'internalCatalog':
        return send(res, 200, { repos: driver.participant.catalog() });
      case 'internalNode':
        return send(res, 200, this.nodeInfo());
      case 'internalMembership': {
        const { node, dead } = parseMembership(parseJson(await readBody(req, 4096)));
        const problem = await driver.setMembership(node, dead);
        if (problem !== undefined) throw new QuorumGitError('membership_refused', problem);
        return send(res, 200, { dead: driver.participant.deadNodes() });
      }
      case 'internalTxn': {
        // A push's prepare lists every ref update: bounded by the refs-per-push limit, not the API's.
        const limit = config.maxRefsPerPush * REF_UPDATE_BYTES + Math.ceil(this.options.inlinePackMaxBytes * 1.4);
        const expected = target.step === 'prepare' ? 'prepare' : target.step === 'commit' ? 'commitTxn' : 'abortTxn';
        const { msg, inlineFiles } = parseTxnMessage(parseJson(await readBody(req, limit)), expected, {
          maxRefsPerPush: config.maxRefsPerPush,
          nodes: driver.nodes,
        });
        this.checkTxnSender(msg, sender!);
        log.debug('txn message', { txn_id: msg.txnId, type: msg.type, from: sender });
        return send(res, 200, await driver.handleMessage(msg, inlineFiles));
      }
      case 'internalQuery':
        return send(res, 200, await driver.handleQuery(target.txnId, target.refuse, target.asCoordinator, target.repoId));
      case 'internalHook': {
        if (target.hook === 'proc-receive') throw new QuorumGitError('invalid_body', `this route takes an upgrade to ${PROC_RECEIVE_UPGRADE} (the proc-receive hook's)`);
        const body = await readBody(req, config.maxRefsPerPush * REF_UPDATE_BYTES);
        const pid = Number(req.headers['x-receive-pack-pid']);
        // From here the push may be committed anywhere: its receive-pack must not be killed when its client goes away.
        if (Number.isInteger(pid) && pid > 0) this.options.gitHttp.markHookStarted(pid);
        const verdict = await this.options.pushService.preReceive({
          gitDir: String(req.headers['x-git-dir'] ?? ''),
          quarantine: String(req.headers['x-quarantine'] ?? ''),
          receivePackPid: Number.isInteger(pid) && pid > 0 ? pid : undefined,
          body: body.toString('utf8'),
          requestId,
        });
        this.auditPush(log, req, pid, body.toString('utf8'), verdict);
        res.writeHead(verdict.ok ? 200 : 409, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(verdict.message === '' ? '' : `${verdict.message}\n`);
        return;
      }
      case 'internalPackUpload':
        return this.receivePackFile(req, res, target.txnId, target.file);
      case 'internalPackStage':
        if (!target.drop) return this.receiveStagedPack(req, res, target.stageId);
        await fsp.rm(this.options.store.incomingDir(target.stageId), { recursive: true, force: true });
        return send(res, 204);
      case 'internalRepoState':
        return send(res, 200, { ...(await repoState(driver, this.options.store, target.repoId, { refs: target.withRefs, digest: target.withDigest })), ...this.lockState(target.repoId) });
    }
  }

  /** The proc-receive hook's connection, upgraded (lib/git/proc-receive.ts); the app has checked the route and the secret. */
  serveProcReceive(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const pid = Number(req.headers['x-receive-pack-pid']);
    return this.options.pushService.serveProcReceive(Number.isInteger(pid) && pid > 0 ? pid : undefined, socket, head);
  }

  /** GET /internal/node: who we are and how we are, for the operator tools. */
  private nodeInfo(): Record<string, unknown> {
    const { config, driver } = this.options;
    return {
      server_id: config.serverId,
      url: config.selfUrl,
      nodes: driver.nodes,
      quorum: config.quorum,
      recovered: this.options.recovered(),
      in_doubt: driver.participant.inDoubt().length,
      repos: driver.participant.liveRepos().length,
      dead: driver.participant.deadNodes(),
      empty: driver.participant.isEmpty(),
    };
  }

  /** Added to the internal repo-state answer, so `verify` can tell a replica held by a transaction. */
  private lockState(repoId: string): { locked: boolean; in_doubt: boolean } {
    const { driver } = this.options;
    return {
      locked: driver.participant.lockedBy(repoId) !== undefined,
      in_doubt: driver.participant.inDoubt().some((t) => t.op.repoId === repoId),
    };
  }

  /**
   * A prepare names its sender as coordinator; a commit or abort of a transaction prepared here comes
   * from that coordinator only (one with no record here, from any peer: the core refuses a commit it
   * never prepared, and an abort of it only promises never to prepare it). And a create or delete
   * commit must be plausible (commitEpochProblem). With one shared secret these stop a confused or
   * misrouted peer, not a holder of the secret: README, Security.
   */
  private checkTxnSender(msg: TxnMessage, sender: NodeId): void {
    if (msg.type === 'prepare') {
      if (msg.coordinator !== sender) throw new QuorumGitError('not_coordinator', `a prepare must name its sender (${sender}) as coordinator, not ${msg.coordinator}`);
      return;
    }
    const participant = this.options.driver.participant;
    const coordinator = participant.coordinatorOf(msg.txnId);
    if (coordinator !== undefined && coordinator !== sender) {
      throw new QuorumGitError('not_coordinator', `transaction ${msg.txnId} was prepared by ${coordinator}: only it may commit or abort it`);
    }
    if (msg.type === 'commitTxn') {
      const op = participant.opOf(msg.txnId);
      const problem = op === undefined ? undefined : commitEpochProblem(op, participant.versionOf(op.repoId), msg.epoch);
      if (problem !== undefined) {
        this.options.logger.warn('refused an implausible commit', { txn_id: msg.txnId, from: sender, repo_id: op?.repoId, epoch: msg.epoch });
        throw new QuorumGitError('invalid_body', problem);
      }
    }
  }

  /**
   * A peer streams one file of a push's pack to us ahead of the prepare; bounded, never buffered. With
   * STAGED_PACK_HEADER and no body, the pack we were streamed while its client sent it is taken instead,
   * if it is this very file: its stage holds a file of this name only if its checksum is the name's.
   */
  private async receivePackFile(req: http.IncomingMessage, res: http.ServerResponse, txnId: string, file: string): Promise<void> {
    const dir = this.options.store.incomingDir(txnId);
    const staged = req.headers[STAGED_PACK_HEADER];
    if (staged !== undefined) {
      if (typeof staged !== 'string' || !STAGE_ID.test(staged) || !file.endsWith('.pack')) {
        throw new QuorumGitError('invalid_body', `${STAGED_PACK_HEADER} must name a stage (stage-<24 hex>), for a .pack`);
      }
      await readBody(req, 0);
      const stage = this.options.store.incomingDir(staged);
      await fsp.mkdir(dir, { recursive: true });
      try {
        await fsp.rename(path.join(stage, file), path.join(dir, file));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        throw new QuorumGitError('not_found', `no staged pack ${file} in ${staged}; upload it`);
      }
      await fsp.rm(stage, { recursive: true, force: true });
      return send(res, 204);
    }
    await fsp.mkdir(dir, { recursive: true });
    const tmp = path.join(dir, `${file}.tmp`);
    try {
      // fsynced before it is closed: a peer's yes vote promises it has the objects.
      await pipeline(req, this.sizeLimit(), createWriteStream(tmp, { flush: true }));
      await fsp.rename(tmp, path.join(dir, file));
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    }
    send(res, 204);
  }

  /**
   * A peer streams us a push's pack as its client sends it (lib/cluster/pack-tee.ts). Kept, fsynced,
   * as pack-<checksum>.pack in the stage's directory only if it ends in its own checksum; the hook's
   * upload of that name then takes it (receivePackFile). Stages never taken are swept as idle uploads.
   */
  private async receiveStagedPack(req: http.IncomingMessage, res: http.ServerResponse, stageId: string): Promise<void> {
    const dir = this.options.store.incomingDir(stageId);
    await fsp.mkdir(dir, { recursive: true });
    const tmp = path.join(dir, 'stream.tmp');
    const check = new PackTrailerCheck();
    try {
      await pipeline(req, this.sizeLimit(), check, createWriteStream(tmp, { flush: true }));
      if (check.checksum === undefined) throw new QuorumGitError('invalid_body', 'the stream does not end in its own checksum: not a whole pack');
      await fsp.rename(tmp, path.join(dir, `pack-${check.checksum}.pack`));
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    }
    send(res, 204);
  }

  /** Passes a pack on, failing it once it exceeds MAX_PACK_BYTES. */
  private sizeLimit(): Transform {
    let size = 0;
    const limit = this.options.config.maxPackBytes;
    return new Transform({
      transform(chunk: Buffer, _enc, done) {
        size += chunk.length;
        if (size > limit) done(new QuorumGitError('body_too_large', `pack exceeds ${limit} bytes`));
        else done(null, chunk);
      },
    });
  }

  /** One push's audit line, written where its pre-receive hook ran (the repo's coordinator). */
  private auditPush(log: Logger, req: http.IncomingMessage, pid: number, body: string, verdict: { ok: boolean; message: string; txnId?: string }): void {
    const repoId = this.options.store.repoIdOf(String(req.headers['x-git-dir'] ?? '')) ?? 'unknown';
    const origin = (Number.isInteger(pid) && pid > 0 ? this.options.gitHttp.receivePackOrigin(pid) : undefined) as (AuditWho & { request_id?: string }) | undefined;
    const { updates, total } = auditUpdates(body);
    if (total === 0) return;
    const reason = verdict.ok ? undefined : verdict.message.split('\n')[0]!.replace(/^quorum-git: /, '').slice(0, 300);
    auditPush(log, {
      ...(origin ?? { user: null, client: 'unknown' }),
      request_id: origin?.request_id,
      repo_id: repoId,
      updates,
      refs_total: total,
      outcome: verdict.ok ? 'committed' : 'rejected',
      ...(reason === undefined ? {} : { reason }),
      ...(verdict.txnId === undefined ? {} : { txn_id: verdict.txnId }),
    });
  }
}
