import { randomInt } from 'node:crypto';
import type http from 'node:http';
import { sleep, type Clock } from '../base/clock.js';
import type { Config } from '../base/config.js';
import type { NodeMetrics } from '../base/metrics.js';
import type { PeerClient } from '../cluster/peer-client.js';
import type { TxnDriver } from '../cluster/txn-driver.js';
import { mergeCatalogs, newestSettings, type CatalogAnswer } from '../core/catalog-merge.js';
import { QuorumGitError, errorBody, isQuorumGitError } from '../core/errors.js';
import { readQuorum } from '../core/quorum.js';
import { parseRepoId } from '../core/repo-id.js';
import { applySettingsChange, DEFAULT_REPO_SETTINGS, settingsView, type RepoSettings } from '../core/repo-settings.js';
import type { ReadPlan } from '../core/routing.js';
import type { TxnOp } from '../core/txn-core.js';
import { auditRepoChange } from './audit.js';
import { decideRepo, type Callers, type Gate, type RepoAccess } from './authz.js';
import { readJson, send } from './io.js';
import type { Route } from './router.js';

// Management API ------------------------------------------------------------------------------
//
// Reads and pre-checks give read-your-writes across nodes, like git reads: R = N-W+1 nodes (this
// one included) meet every write quorum, so the newest state among their answers includes every
// acknowledged create and delete, whether or not this node has applied it yet.

const BUSY_RETRIES = 3;
const BUSY_BACKOFF_MS = 15;

export type ManagementRoute = Extract<Route, { kind: 'listRepos' | 'getRepo' | 'createRepo' | 'deleteRepo' | 'updateRepoSettings' }>;

/**
 * A repo's access settings (lib/http/authz.ts): this node's copy of the replicated settings. Every node
 * holds the same committed settings once applied; a node that missed a change adopts it by
 * anti-entropy (TxnDriver.syncOnce), and until then decides by the settings it has.
 */
export function repoAccess(driver: Pick<TxnDriver, 'participant'>, repoId: string): RepoAccess {
  const settings = driver.participant.repo(repoId)?.settings ?? DEFAULT_REPO_SETTINGS;
  return { visibility: settings.visibility, collaborators: settings.collaborators };
}

export interface ManagementApiOptions {
  config: Pick<Config, 'selfUrl' | 'quorum' | 'peerUrls' | 'readCheckTimeoutMs' | 'maxBodyBytes'>;
  driver: TxnDriver;
  client: Pick<PeerClient, 'readCatalog'>;
  clock: Clock;
  metrics: Pick<NodeMetrics, 'timeTxn'>;
  /** The node's gate (replaced at start when AUTH_FILE is set). */
  gate: () => Gate;
  callers: Callers;
  newTxnId: () => string;
  /** Where a read of the repo would be served (the git gateway's read planning). */
  planRead: (repoId: string, requestId: string) => Promise<ReadPlan>;
}

export class ManagementApi {
  private readonly options: ManagementApiOptions;

  constructor(options: ManagementApiOptions) {
    this.options = options;
  }

  serve(target: ManagementRoute, req: http.IncomingMessage, res: http.ServerResponse, requestId: string): Promise<void> {
    switch (target.kind) {
      case 'listRepos':
        return this.apiListRepos(res, requestId);
      case 'getRepo':
        return this.apiGetRepo(res, target.repoId, requestId);
      case 'createRepo':
        return this.apiCreateRepo(req, res, requestId);
      case 'deleteRepo':
        return this.apiDeleteRepo(res, target.repoId, requestId);
      case 'updateRepoSettings':
        return this.apiUpdateSettings(req, res, target.repoId, requestId);
    }
  }

  private async replicate(op: TxnOp, requestId: string, res: http.ServerResponse, txnIds: string[] = []): Promise<void> {
    const { config, driver, clock } = this.options;
    // Two coordinators that lock the same name on different nodes can both lose (repo_busy) when no
    // third node breaks the tie; each retries after a random pause, and the second attempt of the
    // loser then finds the winner's repo (repo_exists).
    const run = (): ReturnType<TxnDriver['runTxn']> => {
      const txnId = this.options.newTxnId();
      txnIds.push(txnId);
      return this.options.metrics.timeTxn(op.kind, () => driver.runTxn(op, requestId, { txnId }));
    };
    let result = await run();
    for (let attempt = 1; attempt <= BUSY_RETRIES && result.outcome === 'aborted' && result.code === 'repo_busy'; attempt += 1) {
      await sleep(clock, randomInt(BUSY_BACKOFF_MS * attempt, BUSY_BACKOFF_MS * attempt * 3));
      result = await run();
    }
    if (result.outcome === 'aborted') {
      const failedPeers = result.failed.filter((n) => n !== config.selfUrl);
      switch (result.code) {
        case 'repo_exists':
          throw new QuorumGitError('repo_exists', `repository ${op.repoId} already exists`);
        case 'repo_not_found':
          throw new QuorumGitError('repo_not_found', `repository ${op.repoId} does not exist`);
        case 'repo_busy':
          throw new QuorumGitError('repo_busy', `repository ${op.repoId} is being changed by another request; retry`);
        case 'stale':
        case 'ref_conflict':
        case 'ref_name_clash':
        case 'protected_ref':
        case 'quorum_unreachable':
          throw new QuorumGitError(
            'quorum_unreachable',
            `could not reach a quorum of ${config.quorum} of ${driver.nodes.length} nodes; failed: ${result.failed.join(', ') || 'none'}. Nothing was changed.`,
            { details: { failed_peers: failedPeers, quorum: config.quorum } },
          );
      }
    }
    if (result.final === false) {
      // Decided here, but no other node was known to hold the decision: recovery settles it either way.
      throw new QuorumGitError(
        'txn_in_doubt',
        `the ${op.kind} of ${op.repoId} was decided but no other node confirmed it in time; its outcome is settled by recovery within seconds: check with GET /repos/${op.repoId}`,
      );
    }
    const confirmedPeers = result.confirmed.filter((n) => n !== config.selfUrl);
    if (op.kind === 'delete') {
      // Final, but fewer than W nodes had removed it when the commit resends ran out (the rest do by
      // recovery): 202 says so, as a create's does.
      if (result.confirmed.length >= config.quorum) return send(res, 204);
      return send(res, 202, { repo_id: op.repoId, deleted: true, replicated: false, nodes_confirmed: result.confirmed.length, quorum: config.quorum });
    }
    return send(res, result.confirmed.length >= config.quorum ? 201 : 202, {
      repo_id: op.repoId,
      created: true,
      replicated: result.confirmed.length >= config.quorum,
      peers_confirmed: confirmedPeers.length,
      nodes_confirmed: result.confirmed,
      quorum: config.quorum,
      epoch: result.epoch,
      clone_url: `${config.selfUrl}/${op.repoId}.git`,
    });
  }

  private async apiGetRepo(res: http.ServerResponse, repoId: string, requestId: string): Promise<void> {
    const plan = await this.options.planRead(repoId, requestId);
    switch (plan.action) {
      case 'unavailable':
        throw this.readQuorumError(plan);
      case 'not_found':
        return this.sendRepoNotFound(res, repoId);
      case 'local':
      case 'proxy': {
        // 'local': our copy is the newest, read again now (it can only have moved on).
        const version = plan.action === 'proxy' ? plan.newest : this.options.driver.participant.versionOf(repoId);
        return send(res, 200, { repo_id: repoId, exists: true, epoch: version.epoch, generation: version.generation, ...this.settingsShown(res, repoId) });
      }
    }
  }

  /**
   * The pre-check only gives a fast clear answer; the participants' votes decide. So when it cannot
   * reach R nodes, or our own catalog is behind, the 2PC still runs and answers.
   */
  private async apiCreateRepo(req: http.IncomingMessage, res: http.ServerResponse, requestId: string): Promise<void> {
    const body = await readJson(req, this.options.config.maxBodyBytes);
    const repoId = this.repoIdFromBody(body);
    // A create may set the visibility (the repo's initial settings); the rest is changed by PATCH.
    const visibility = (body as { visibility?: unknown }).visibility;
    if (visibility !== undefined && visibility !== 'public' && visibility !== 'private') throw new QuorumGitError('invalid_body', "visibility must be 'public' or 'private'");
    const { caller, ctx } = this.options.callers.get(req)!;
    this.options.gate().checkCreate(res, ctx, caller, repoId);
    const settings: RepoSettings | undefined = visibility === undefined ? undefined : { ...DEFAULT_REPO_SETTINGS, visibility };
    return this.audited('create', res, repoId, async (txnIds) => {
      const plan = await this.options.planRead(repoId, requestId);
      if (plan.action === 'local' || plan.action === 'proxy') throw new QuorumGitError('repo_exists', `repository ${repoId} already exists`);
      return this.replicate({ kind: 'create', repoId, ...(settings === undefined ? {} : { settings }) }, requestId, res, txnIds);
    });
  }

  private async apiDeleteRepo(res: http.ServerResponse, repoId: string, requestId: string): Promise<void> {
    return this.audited('delete', res, repoId, async (txnIds) => {
      const plan = await this.options.planRead(repoId, requestId);
      if (plan.action === 'not_found') throw new QuorumGitError('repo_not_found', `repository ${repoId} does not exist`);
      return this.replicate({ kind: 'delete', repoId }, requestId, res, txnIds);
    });
  }

  /** Runs a create, delete or settings change and writes its audit line: who, the outcome (the status, or the error's code), its transactions. */
  private async audited(
    action: 'create' | 'delete' | 'settings',
    res: http.ServerResponse,
    repoId: string,
    run: (txnIds: string[]) => Promise<void>,
    extra: { settings?: unknown } = {},
  ): Promise<void> {
    const { caller, ctx } = this.options.callers.get(res.req)!;
    const txnIds: string[] = [];
    const line = (outcome: string): void => auditRepoChange(ctx.log, { ...caller.who, action, request_id: ctx.requestId, repo_id: repoId, outcome, txn_ids: txnIds, ...extra });
    try {
      await run(txnIds);
    } catch (err) {
      line(isQuorumGitError(err) ? err.code : 'internal');
      throw err;
    }
    line(res.statusCode === 202 ? 'committed_unconfirmed' : 'committed');
  }

  /** A repo's settings as GET shows them: collaborators only to those who may change them. */
  private settingsShown(res: http.ServerResponse, repoId: string): Record<string, unknown> {
    const entry = this.options.driver.participant.repo(repoId);
    const { visibility, collaborators, protected_branches } = settingsView(entry?.settings ?? DEFAULT_REPO_SETTINGS);
    const caller = this.options.callers.get(res.req)?.caller;
    const admin = caller === undefined || !caller.enforced || decideRepo(caller.principal, repoId, 'admin', repoAccess(this.options.driver, repoId)).allow;
    return { visibility, protected_branches, ...(admin ? { collaborators } : {}), settings_version: entry?.settingsVersion ?? 0 };
  }

  /**
   * PATCH /repos/o/n: a settings change, committed on a quorum like a create (a `settings`
   * transaction). It is based on the newest settings among R nodes; a concurrent change that commits
   * first makes the participants vote stale: 409 settings_conflict, nothing changed, read and retry.
   */
  private async apiUpdateSettings(req: http.IncomingMessage, res: http.ServerResponse, repoId: string, requestId: string): Promise<void> {
    const { config, driver } = this.options;
    const body = await readJson(req, config.maxBodyBytes);
    const found = newestSettings(await this.readCatalogs(requestId), repoId, readQuorum(driver.nodes.length, config.quorum));
    if (found.action === 'unavailable') throw this.readQuorumError(found);
    if (found.action === 'not_found' || found.action === 'merged') return this.sendRepoNotFound(res, repoId);
    const change = applySettingsChange(found.entry?.settings ?? DEFAULT_REPO_SETTINGS, body);
    if ('problem' in change) throw new QuorumGitError('invalid_body', change.problem);
    const { settings } = change;
    const base = { epoch: found.epoch, settingsVersion: found.settingsVersion };
    return this.audited(
      'settings',
      res,
      repoId,
      async (txnIds) => {
        const txnId = this.options.newTxnId();
        txnIds.push(txnId);
        const result = await this.options.metrics.timeTxn('settings', () => driver.runTxn({ kind: 'settings', repoId, settings, base }, requestId, { txnId }));
        if (result.outcome === 'aborted') {
          switch (result.code) {
            case 'stale':
              throw new QuorumGitError('settings_conflict', `the settings of ${repoId} were changed by another request meanwhile; nothing was changed: read them again (GET /repos/${repoId}) and retry`);
            case 'repo_not_found':
              throw new QuorumGitError('repo_not_found', `repository ${repoId} does not exist`);
            case 'repo_busy':
              throw new QuorumGitError('repo_busy', `repository ${repoId} is being changed by another request; retry`);
            default:
              throw new QuorumGitError('quorum_unreachable', `could not reach a quorum of ${config.quorum} of ${driver.nodes.length} nodes; failed: ${result.failed.join(', ') || 'none'}. Nothing was changed.`);
          }
        }
        if (result.final === false) {
          throw new QuorumGitError('txn_in_doubt', `the settings change of ${repoId} was decided but no other node confirmed it in time; its outcome is settled by recovery within seconds: check with GET /repos/${repoId}`);
        }
        return send(res, 200, { repo_id: repoId, ...settingsView(settings), settings_version: result.generation, nodes_confirmed: result.confirmed });
      },
      { settings: settingsView(settings) },
    );
  }

  sendRepoNotFound(res: http.ServerResponse, repoId: string): void {
    const err = new QuorumGitError('repo_not_found', `repository ${repoId} does not exist`);
    send(res, 404, { repo_id: repoId, exists: false, ...errorBody(err) });
  }

  /** The live repos by the catalogs of R nodes, newest state per repo; 503 with fewer than R. */
  private async apiListRepos(res: http.ServerResponse, requestId: string): Promise<void> {
    const r = readQuorum(this.options.driver.nodes.length, this.options.config.quorum);
    const merged = mergeCatalogs(await this.readCatalogs(requestId), r);
    if (merged.action === 'unavailable') throw this.readQuorumError(merged);
    const { caller } = this.options.callers.get(res.req)!;
    const gate = this.options.gate();
    const repos = Object.entries(merged.repos)
      .filter(([id, e]) => e.state === 'live' && gate.canRead(caller, id))
      .map(([id]) => id);
    return send(res, 200, { repos, count: repos.length });
  }

  /** Our catalog and those of at least R - 1 peers (fewer if not reachable; the merge then refuses). */
  private async readCatalogs(requestId: string): Promise<CatalogAnswer[]> {
    const { config, driver } = this.options;
    const r = readQuorum(driver.nodes.length, config.quorum);
    const answers: CatalogAnswer[] = [{ node: config.selfUrl, reachable: true, catalog: driver.participant.catalog() }];
    if (r > 1) {
      // As in planRead: decided as soon as R - 1 peers have answered, so one hung peer costs nothing.
      await new Promise<void>((resolve) => {
        let reached = 0;
        let settled = 0;
        for (const node of config.peerUrls) {
          this.options.client
            .readCatalog(node, config.readCheckTimeoutMs, requestId)
            .then(
              (catalog) => {
                reached += 1;
                answers.push({ node, reachable: true, catalog });
              },
              () => answers.push({ node, reachable: false }),
            )
            .finally(() => {
              settled += 1;
              if (reached >= r - 1 || settled === config.peerUrls.length) resolve();
            });
        }
      });
    }
    return [...answers];
  }

  private readQuorumError(plan: Extract<ReadPlan, { action: 'unavailable' }>): QuorumGitError {
    return new QuorumGitError(
      'read_quorum_unreachable',
      `cannot confirm the current state: reached ${plan.reached} of the ${plan.needed} nodes needed; unreachable: ${plan.unreachable.join(', ') || 'none'}`,
      { details: { reached: plan.reached, needed: plan.needed } },
    );
  }

  private repoIdFromBody(body: unknown): string {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new QuorumGitError('invalid_body', 'the body must be a JSON object like {"repo_id": "owner/name"}');
    }
    const unknownKeys = Object.keys(body).filter((k) => k !== 'repo_id' && k !== 'visibility');
    if (unknownKeys.length > 0) throw new QuorumGitError('invalid_body', `unknown field(s): ${unknownKeys.join(', ')}`);
    if (!('repo_id' in body)) throw new QuorumGitError('invalid_body', 'repo_id is required');
    const id = parseRepoId((body as { repo_id: unknown }).repo_id);
    return `${id.owner}/${id.name}`;
  }
}
