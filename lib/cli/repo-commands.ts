import http from 'node:http';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { isQuorumGitError } from '../core/errors.js';
import { formatRepoId, parseRepoId } from '../core/repo-id.js';
import { formatTable } from './verify.js';
import { EXIT, integerParser, parseNodeUrl, toJson, type Act } from './output.js';

// `quorum-git repo create|list|show|delete --node URL`: the management API of one node (README
// "Management API"), which coordinates writes on a quorum and reads from R nodes, so any node gives
// the cluster's answer. A table (or one line) for people, --json for scripts (the node's answer as it
// came, or the error body), and an exit status that tells a script what to do next (EXIT).

/** Per-request timeout unless --timeout-ms says otherwise: a create or delete waits for its quorum. */
const REPO_TIMEOUT_MS = 60_000;
/** An answer larger than this is cut off (a list of 100,000 repos is ~5 MB). */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
/** Connection errors that mean the request never reached the node: nothing can have changed. */
const NOT_SENT_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);

export type RequestKind = 'read' | 'write';

/** What came back from one management request: the node's answer, or why there was none. */
export type ApiAnswer =
  | { kind: 'answer'; status: number; body: unknown }
  /** `sent`: the request may have reached the node (a timeout, a reset) and so may have acted. */
  | { kind: 'no-answer'; sent: boolean; message: string };

interface ErrorFields {
  code?: string;
  message?: string;
}

function errorOf(body: unknown): ErrorFields | undefined {
  if (typeof body !== 'object' || body === null || !('error' in body)) return undefined;
  const error = (body as { error: unknown }).error;
  return typeof error === 'object' && error !== null ? (error as ErrorFields) : undefined;
}

/**
 * The exit status for an answer. A 503 and no connection leave nothing changed (retry later); a write
 * that may have reached the node without an answer, a `txn_in_doubt`, or a write's 500 leave the
 * outcome open (look with `repo show`); other refusals are final.
 */
export function exitForAnswer(kind: RequestKind, answer: ApiAnswer): number {
  if (answer.kind === 'no-answer') return answer.sent && kind === 'write' ? EXIT.inDoubt : EXIT.unavailable;
  const { status } = answer;
  if (status >= 200 && status < 300) return EXIT.ok;
  const code = errorOf(answer.body)?.code;
  if (code === 'txn_in_doubt') return EXIT.inDoubt;
  if (code === 'repo_busy' || status === 502 || status === 503 || status === 504) return EXIT.unavailable;
  if (status >= 500 && kind === 'write') return EXIT.inDoubt;
  return EXIT.failed;
}

/** One line for stderr saying why a request did not succeed. */
export function describeFailure(answer: ApiAnswer): string {
  if (answer.kind === 'no-answer') return answer.message;
  const error = errorOf(answer.body);
  if (error?.message) return `${error.message} (${error.code ?? 'error'}, HTTP ${answer.status})`;
  return `the node answered HTTP ${answer.status}`;
}

/** The body --json prints for a request that did not succeed. */
export function failureJson(answer: ApiAnswer): unknown {
  if (answer.kind === 'answer' && errorOf(answer.body)) return answer.body;
  if (answer.kind === 'answer') return { error: { code: 'unexpected_answer', message: `HTTP ${answer.status}` } };
  return { error: { code: answer.sent ? 'no_answer' : 'unreachable', message: answer.message } };
}

/**
 * One request to a node's management API. node:http rather than fetch: a process that used fetch
 * (undici and its WebAssembly parser) took 1-2 s longer to exit on the loaded 2-core machine.
 */
export function apiRequest(node: string, method: string, pathname: string, body: unknown, timeoutMs: number): Promise<ApiAnswer> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (answer: ApiAnswer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(answer);
    };
    const payload = body === undefined ? undefined : JSON.stringify(body);
    // When the management API takes credentials (the auth work), they are added to these headers.
    const headers: Record<string, string | number> = { accept: 'application/json' };
    if (payload !== undefined) Object.assign(headers, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
    let timedOut = false;
    const req = http.request(`${node}${pathname}`, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let sizeBytes = 0;
      res.on('data', (chunk: Buffer) => {
        sizeBytes += chunk.length;
        if (sizeBytes > MAX_ANSWER_BYTES) req.destroy(new Error(`${node} answered more than ${MAX_ANSWER_BYTES} bytes`));
        else chunks.push(chunk);
      });
      res.on('error', () => undefined); // reported through the request's 'error'
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = text === '' ? undefined : JSON.parse(text);
        } catch {
          // not JSON: kept as text
        }
        settle({ kind: 'answer', status: res.statusCode ?? 0, body: parsed });
      });
    });
    const timer = setTimeout(() => {
      timedOut = true;
      req.destroy();
    }, timeoutMs);
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (timedOut) settle({ kind: 'no-answer', sent: true, message: `${node} did not answer within ${timeoutMs} ms` });
      else settle({ kind: 'no-answer', sent: err.code === undefined || !NOT_SENT_CODES.has(err.code), message: `cannot reach ${node}: ${err.message}` });
    });
    req.end(payload);
  });
}

// ---------------------------------------------------------------------------------------------
// Human output of each answer

interface CreateAnswer {
  repo_id: string;
  replicated?: boolean;
  nodes_confirmed?: string[];
  quorum?: number;
  epoch?: number;
  clone_url?: string;
}

export function formatCreated(status: number, body: CreateAnswer): string {
  const confirmed = body.nodes_confirmed?.length ?? 0;
  const how =
    status === 202
      ? `final, but applied on ${confirmed} node(s) so far, fewer than the quorum of ${body.quorum}: the others apply it by recovery`
      : `applied on ${confirmed} node(s) (quorum ${body.quorum})`;
  return `created ${body.repo_id}: ${how}, epoch ${body.epoch}\nclone: git clone ${body.clone_url}`;
}

export function formatList(body: { repos: string[]; count: number }): string {
  if (body.repos.length === 0) return 'no repositories';
  return `${formatTable(['REPO'], body.repos.map((r) => [r]))}\n${body.count} repositor${body.count === 1 ? 'y' : 'ies'}`;
}

export function formatShown(node: string, body: { repo_id: string; epoch: number; generation: number }): string {
  return formatTable(['REPO', 'VERSION', 'CLONE_URL'], [[body.repo_id, `${body.epoch}.${body.generation}`, `${node}/${body.repo_id}.git`]]);
}

// ---------------------------------------------------------------------------------------------
// Commands

interface RepoOptions {
  node: string;
  json?: boolean;
  timeoutMs: number;
}

function parseRepoArgument(value: string): string {
  try {
    return formatRepoId(parseRepoId(value));
  } catch (err) {
    if (isQuorumGitError(err)) throw new InvalidArgumentError(`'${value}': ${err.message}`);
    throw err;
  }
}

function withCommonOptions(command: Command): Command {
  return command
    .addOption(new Option('--node <url>', 'any node of the cluster, e.g. http://127.0.0.1:3001').env('QUORUM_GIT_NODE').argParser(parseNodeUrl).makeOptionMandatory())
    .option('--json', "print the node's answer as JSON (errors too), for scripts")
    .addOption(new Option('--timeout-ms <ms>', 'how long to wait for the answer').argParser(integerParser('--timeout-ms', 1, 3_600_000)).default(REPO_TIMEOUT_MS));
}

/** Runs one request and prints the outcome; `format` renders a success for people. */
async function runRequest(
  name: string,
  kind: RequestKind,
  options: RepoOptions,
  request: { method: string; pathname: string; body?: unknown },
  format: (status: number, body: unknown) => { human: string; json: unknown },
): Promise<number> {
  const answer = await apiRequest(options.node, request.method, request.pathname, request.body, options.timeoutMs);
  const code = exitForAnswer(kind, answer);
  if (code === EXIT.ok && answer.kind === 'answer') {
    const out = format(answer.status, answer.body);
    process.stdout.write(options.json ? toJson(out.json) : `${out.human}\n`);
    return code;
  }
  if (options.json) process.stdout.write(toJson(failureJson(answer)));
  const hint = code === EXIT.inDoubt ? ' (the outcome is not known yet: check with `quorum-git repo show`)' : '';
  process.stderr.write(`quorum-git repo ${name}: ${describeFailure(answer)}${hint}\n`);
  return code;
}

const EXIT_HELP = `
Exit status: 0 done; 1 refused (exists, not found, invalid name); 2 usage error (nothing sent);
3 unavailable, nothing changed (node unreachable, no quorum now: retry later); 4 outcome unknown
(a create or delete sent without a final answer: check with 'repo show').`;

/** `repo create|list|show|delete`; `act` records each action's exit status. */
export function registerRepoCommands(program: Command, act: Act): void {
  const repo = program
    .command('repo')
    .description('create, list, show and delete repositories through any node (the management API)')
    .addHelpText('after', EXIT_HELP);

  withCommonOptions(repo.command('create').description('create a repository on a quorum of nodes').argument('<repo>', 'owner/name', parseRepoArgument))
    .addHelpText('after', EXIT_HELP)
    .action(
      act(async (repoId: string, options: RepoOptions) =>
        runRequest('create', 'write', options, { method: 'POST', pathname: '/repos', body: { repo_id: repoId } }, (status, body) => ({
          human: formatCreated(status, body as CreateAnswer),
          json: body,
        })),
      ),
    );

  withCommonOptions(repo.command('list').description("every repository the cluster holds (the catalogs of a read quorum, merged)"))
    .addHelpText('after', EXIT_HELP)
    .action(
      act(async (options: RepoOptions) =>
        runRequest('list', 'read', options, { method: 'GET', pathname: '/repos' }, (_status, body) => ({
          human: formatList(body as { repos: string[]; count: number }),
          json: body,
        })),
      ),
    );

  withCommonOptions(repo.command('show').description("a repository's newest version among a read quorum, and its clone URL").argument('<repo>', 'owner/name', parseRepoArgument))
    .addHelpText('after', EXIT_HELP)
    .action(
      act(async (repoId: string, options: RepoOptions) =>
        runRequest('show', 'read', options, { method: 'GET', pathname: `/repos/${repoId}` }, (_status, body) => ({
          human: formatShown(options.node, body as { repo_id: string; epoch: number; generation: number }),
          json: body,
        })),
      ),
    );

  withCommonOptions(repo.command('delete').description('delete a repository on a quorum of nodes (a tombstone keeps it from coming back)').argument('<repo>', 'owner/name', parseRepoArgument))
    .addHelpText('after', EXIT_HELP)
    .action(
      act(async (repoId: string, options: RepoOptions) =>
        runRequest('delete', 'write', options, { method: 'DELETE', pathname: `/repos/${repoId}` }, () => ({
          human: `deleted ${repoId}`,
          json: { repo_id: repoId, deleted: true },
        })),
      ),
    );
}
