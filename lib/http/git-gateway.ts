import type http from 'node:http';
import type https from 'node:https';
import { createProxyServer, type ProxyServer } from 'http-proxy-3';
import { sleep, systemClock } from '../base/clock.js';
import type { Config } from '../base/config.js';
import { REQUEST_ID_HEADER, SECRET_HEADER } from '../base/headers.js';
import type { Logger } from '../base/logger.js';
import type { NodeMetrics } from '../base/metrics.js';
import { CATCH_UP_HEADER, DIRECT_HEADER, type CatchUp } from '../cluster/catch-up.js';
import type { Membership } from '../cluster/membership.js';
import { peerAgent, peerHttpsAgent, type PeerClient } from '../cluster/peer-client.js';
import type { PushService } from '../cluster/push-service.js';
import type { TxnDriver } from '../cluster/txn-driver.js';
import { QuorumGitError } from '../core/errors.js';
import { readQuorum } from '../core/quorum.js';
import { pickCoordinator, planRead, type ReplicaAnswer } from '../core/routing.js';
import type { NodeId } from '../core/txn-core.js';
import type { RepoStore } from '../storage/repo-store.js';
import type { Callers } from './authz.js';
import type { GitHttp } from './git-http.js';
import { clientAddress, type GitSlot } from './git-rpc.js';
import { isPeer, repoState } from './internal-api.js';

// The git gateway: decides where a git request is served and carries it out. Reads are planned
// (core/routing.ts planRead over the versions R nodes report) and served here or proxied to a node
// that is current; pushes go to the repo's coordinator; a peer's `direct` request is served from our
// own copy. Serving itself is lib/http/git-http.ts.

/**
 * Set (with the cluster secret) on a client's request one node proxies to another: the receiving
 * node authorizes the client's own credentials again. A peer's request without it (catch-up's fetch)
 * is the cluster's own and the secret authorizes it.
 */
export const PROXIED_HEADER = 'x-quorum-proxied';

export interface GitGatewayOptions {
  config: Pick<Config, 'selfUrl' | 'clusterSecret' | 'quorum' | 'peerUrls' | 'readCheckTimeoutMs' | 'commitTimeoutMs' | 'allowStaleReads' | 'tlsCa'>;
  driver: TxnDriver;
  store: RepoStore;
  client: Pick<PeerClient, 'repoState'>;
  gitHttp: GitHttp;
  pushService: Pick<PushService, 'waitIdle'>;
  catchUp: Pick<CatchUp, 'request' | 'nudge'>;
  membership: Pick<Membership, 'liveNodes' | 'get'>;
  metrics: Pick<NodeMetrics, 'observeGitRpc'>;
  callers: Callers;
  /** Answers a request with an error (the app's error mapping). */
  fail: (res: http.ServerResponse, err: unknown, log: Logger) => void;
}

export class GitGateway {
  private readonly options: GitGatewayOptions;
  private readonly proxy: ProxyServer;
  private readonly proxyAgent = peerAgent(256);
  private readonly proxyHttpsAgent: https.Agent;

  constructor(options: GitGatewayOptions) {
    this.options = options;
    // Streams both ways without buffering; no timeout of its own (a long clone is not an error).
    this.proxy = createProxyServer({ agent: this.proxyAgent, xfwd: true });
    this.proxyHttpsAgent = peerHttpsAgent(256, options.config.tlsCa);
  }

  close(): void {
    this.proxy.close();
    this.proxyAgent.destroy();
    this.proxyHttpsAgent.destroy();
  }

  /**
   * Git over smart HTTP. Pushes go to the repo's coordinator (proxied there when they arrive
   * elsewhere); the coordinator first makes sure its own copy is current. Reads are served here only
   * when our copy is at the newest version among R nodes, else proxied to a node that is, while
   * we catch up in the background. A peer's `direct` request (catch-up, or a proxied read) is served
   * from our own copy.
   */
  async serveGit(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    repoId: string,
    service: 'upload-pack' | 'receive-pack',
    kind: 'gitInfoRefs' | 'gitRpc',
    log: Logger,
  ): Promise<void> {
    const { config, driver, gitHttp } = this.options;
    const fromPeer = isPeer(req, config.clusterSecret);
    /** An RPC's git slot, taken before its read check (below); `handed` once the git serving it here owns it. */
    let slot: GitSlot | undefined;
    let handed = false;
    const serveLocal = async (): Promise<void> => {
      if (!driver.participant.isLive(repoId) || !(await this.options.store.exists(repoId))) {
        throw new QuorumGitError('repo_not_found', 'repository not found');
      }
      // We told read checks the version of a final commit we are still applying: serve once it is applied.
      if (kind === 'gitInfoRefs' && !(await driver.waitApplied(repoId, config.commitTimeoutMs))) {
        throw new QuorumGitError('replica_behind', 'this node is still applying the latest push to this repository; try again');
      }
      if (kind === 'gitInfoRefs') return gitHttp.infoRefs(req, res, repoId, service);
      this.options.metrics.observeGitRpc(req, res, service, !fromPeer ? 'client' : req.headers[CATCH_UP_HEADER] === '1' ? 'replica' : 'proxied');
      const who = this.options.callers.get(req);
      const origin = who === undefined ? undefined : { ...who.caller.who, request_id: who.ctx.requestId };
      if (slot === undefined) throw new QuorumGitError('internal', 'a git RPC reached its git without a slot');
      handed = true;
      return gitHttp.rpc(req, res, repoId, service, log, this.clientOf(req, fromPeer), slot, origin);
    };
    // An RPC takes its git slot before its read check costs peer round trips, or waits for one
    // (GIT_QUEUE_WAIT_MS, in a bounded queue) or is turned away: 300 slow clients must not keep
    // /health waiting behind their checks. The slot goes to the git that serves it here; a request
    // served otherwise gives it back. A peer's direct request (a proxied read, a catch-up) too.
    if (kind === 'gitRpc') {
      const admitted = await gitHttp.admit(req, res, service, this.clientOf(req, fromPeer), log);
      if ('refused' in admitted) return admitted.refused;
      slot = admitted.slot;
      res.once('close', () => handed || slot?.release());
    }
    if (fromPeer && req.headers[DIRECT_HEADER] === '1') return serveLocal();
    if (service === 'receive-pack' && !fromPeer) {
      const coordinator = pickCoordinator(repoId, this.options.membership.liveNodes());
      if (coordinator !== undefined && coordinator !== config.selfUrl) {
        slot?.release();
        return this.forward(req, res, coordinator, log, false, () => this.serveGit(req, res, repoId, service, kind, log));
      }
    }
    // The push itself (the POST) needs no check: the advertisement before it had one, and its
    // prepare verifies version and old values on a quorum anyway.
    if (service === 'receive-pack' && kind === 'gitRpc') return serveLocal();
    if (service === 'receive-pack') await this.options.pushService.waitIdle(repoId);
    // The advertisement starts while the freshness check runs; it is sent only if the check says so.
    // Not while a final commit is being applied here: that advertisement could miss it.
    const early = kind === 'gitInfoRefs' && driver.participant.isLive(repoId) && driver.participant.applying(repoId) === undefined;
    let pending = early ? gitHttp.prepareInfoRefs(req, repoId, service) : undefined;
    // Serves the advertisement started early if it came out whole, else a fresh one.
    const serveChecked = async (): Promise<void> => {
      const started = pending;
      pending = undefined;
      if (started && started.statusCode === 200) return started.send(res);
      started?.discard();
      return serveLocal();
    };
    res.once('close', () => {
      if (!res.headersSent) pending?.discard();
    });
    // Whatever is not served from here (proxied, refused, failed) stops the git started early.
    try {
      let plan = await this.planRead(repoId, String(res.getHeader(REQUEST_ID_HEADER)));
      if (service === 'receive-pack' && plan.action === 'proxy') {
        // The coordinator must be current before it advertises refs to a pusher.
        pending?.discard();
        pending = undefined;
        plan = await this.catchUpForPush(repoId, String(res.getHeader(REQUEST_ID_HEADER)));
        if (plan.action === 'proxy') throw new QuorumGitError('replica_behind', 'this repository is catching up on the coordinating node; push again in a moment');
      }
      switch (plan.action) {
        case 'local':
          return serveChecked();
        case 'not_found':
          throw new QuorumGitError('repo_not_found', 'repository not found');
        case 'proxy':
          void this.options.catchUp.nudge(repoId);
          slot?.release();
          return this.forward(req, res, plan.to, log, true);
        case 'unavailable':
          // A push needs no read quorum to be safe: its prepare checks version and old values on a
          // write quorum, so advertise our refs and let the hook give git a proper rejection.
          if (service === 'receive-pack') return serveChecked();
          if (config.allowStaleReads) {
            log.warn('serving a possibly stale copy (ALLOW_STALE_READS)', { repo_id: repoId });
            res.setHeader('x-quorum-possibly-stale', 'true');
            return serveChecked();
          }
          throw new QuorumGitError(
            'read_quorum_unreachable',
            `cannot confirm this copy is current: reached ${plan.reached} of the ${plan.needed} nodes needed; unreachable: ${plan.unreachable.join(', ') || 'none'}`,
          );
      }
    } finally {
      pending?.discard();
    }
  }

  /** The address the request is charged to: the one the app found (TRUSTED_PROXIES considered), see clientAddress. */
  private clientOf(req: http.IncomingMessage, fromPeer: boolean): string {
    return this.options.callers.get(req)?.ctx.client ?? clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], fromPeer);
  }

  /**
   * The coordinator found a peer ahead of its own copy when a pusher asked for refs: its own apply of
   * the last push may still run, the coordinator may have just changed (a node thought down came
   * back), or a catch-up may be skipped while another transaction holds the repo. It waits for its
   * apply and catches up, again and again, until its copy is current or COMMIT_TIMEOUT_MS is spent:
   * one attempt turned away 11 of 320 pushes under 32 concurrent clients (`npm run bench`).
   */
  private async catchUpForPush(repoId: string, requestId: string): Promise<ReturnType<typeof planRead>> {
    const { driver, catchUp, config } = this.options;
    const deadline = systemClock.now() + config.commitTimeoutMs;
    let pause = 25;
    for (;;) {
      await driver.waitApplied(repoId, Math.max(1, deadline - systemClock.now()));
      await catchUp.request(repoId);
      const plan = await this.planRead(repoId, requestId);
      const left = deadline - systemClock.now();
      if (plan.action !== 'proxy' || left <= 0) return plan;
      await sleep(systemClock, Math.min(pause, left));
      pause = Math.min(pause * 2, 500);
    }
  }

  /** Where a read of the repo is served (core/routing.ts planRead), from our state and that of R - 1 peers. */
  async planRead(repoId: string, requestId: string): Promise<ReturnType<typeof planRead>> {
    const { config, driver } = this.options;
    const own = await repoState(driver, this.options.store, repoId, {});
    const self: ReplicaAnswer & { reachable: true } = { node: config.selfUrl, reachable: true, live: own.live, version: own };
    const n = driver.nodes.length;
    const r = readQuorum(n, config.quorum);
    if (r <= 1) return own.live ? { action: 'local' } : { action: 'not_found' };
    // Any R nodes meet every write quorum, so the plan is made as soon as R - 1 peers have answered:
    // a slow or hung peer does not hold up every read.
    const answers: ReplicaAnswer[] = [];
    await new Promise<void>((resolve) => {
      let reached = 0;
      for (const node of config.peerUrls) {
        this.options.client
          .repoState(node, repoId, {}, config.readCheckTimeoutMs, requestId)
          .then(
            (s) => {
              reached += 1;
              answers.push({ node, reachable: true, live: s.live, version: s });
            },
            () => answers.push({ node, reachable: false }),
          )
          .finally(() => {
            if (reached >= r - 1 || answers.length === config.peerUrls.length) resolve();
          });
      }
    });
    return planRead(self, [...answers], r);
  }

  /**
   * Proxies to another node. When the target is down and nothing was sent yet, it is marked
   * unreachable and a GET is routed again (a POST body is already spent, so that one fails).
   */
  private forward(req: http.IncomingMessage, res: http.ServerResponse, target: NodeId, log: Logger, direct: boolean, retry?: () => Promise<void>): void {
    log.info('proxying', { to: target, direct });
    const headers: Record<string, string> = { [SECRET_HEADER]: this.options.config.clusterSecret, [REQUEST_ID_HEADER]: String(res.getHeader(REQUEST_ID_HEADER)) };
    if (direct) headers[DIRECT_HEADER] = '1';
    // The client's Authorization header goes along as is: the receiving node authorizes it again.
    headers[PROXIED_HEADER] = '1';
    const agent = target.startsWith('https:') ? this.proxyHttpsAgent : this.proxyAgent;
    this.proxy.web(req, res, { target, headers, agent }, (err) => {
      log.warn('proxy failed', { to: target, err: (err as Error).message });
      const peer = this.options.membership.get(target);
      if (peer && (err as NodeJS.ErrnoException).code === 'ECONNREFUSED') peer.reachable = false;
      if (res.headersSent) {
        res.destroy();
      } else if (retry && req.method === 'GET' && peer?.reachable === false) {
        retry().catch((e) => this.options.fail(res, e, log));
      } else {
        this.options.fail(res, new QuorumGitError('peer_unavailable', `the node serving this request (${target}) did not answer; try again`), log);
      }
    });
  }
}
