import { expect } from 'chai';
import fc from 'fast-check';
import path from 'node:path';
import { QuorumGitError, statusByCode } from '../../lib/core/errors.js';
import { VERSION_MAX, parseCatalog, parseMembership, parseRepoState, parseTxnMessage } from '../../lib/cluster/internal-messages.js';
import { deathDeclarationProblem } from '../../lib/core/txn-core.js';
import { parseRepoId, refNameProblem } from '../../lib/core/repo-id.js';
import { RepoStore } from '../../lib/storage/repo-store.js';
import { route } from '../../lib/http/router.js';

// Properties of everything that turns untrusted input into a name on disk (issue 8): the router (URLs
// from anyone), the repo-id validator, and the parser of peers' messages and answers. For any input,
// either a value comes out whose repo maps to exactly DATA_DIR/repos/<owner>/<name>.git, or a
// QuorumGitError with a 4xx status is thrown: never a 5xx, never another exception.

const DATA_DIR = '/srv/quorum-git/node-1';
const store = new RepoStore(DATA_DIR);
const NODES = ['http://127.0.0.1:3001', 'http://127.0.0.1:3002', 'https://git-2.example.com:3001'];
const RUNS = { numRuns: 400 };

/** Throws unless `repoId` maps to a directory two levels below DATA_DIR/repos, named <name>.git. */
function expectInsideRepos(repoId: string): void {
  const dir = store.repoPath(repoId);
  const rel = path.relative(store.reposRoot, dir);
  const parts = rel.split(path.sep);
  expect(path.isAbsolute(rel), dir).to.equal(false);
  expect(parts, dir).to.have.length(2);
  expect(parts.some((p) => p === '..' || p === '.' || p === ''), dir).to.equal(false);
  expect(parts[1]!.endsWith('.git'), dir).to.equal(true);
  expect(dir.startsWith(`${store.reposRoot}${path.sep}`), dir).to.equal(true);
}

/** Inputs taken and refused by the last property: a property that only ever refuses proves little. */
const tally = { taken: 0, refused: 0 };

/** Runs `fn`; a QuorumGitError must be a 4xx, anything else thrown fails the property. */
function valueOr4xx<T>(fn: () => T): T | undefined {
  try {
    const value = fn();
    tally.taken += 1;
    return value;
  } catch (err) {
    tally.refused += 1;
    if (!(err instanceof QuorumGitError)) throw err;
    expect(statusByCode[err.code], `${err.code}: ${err.message}`).to.be.within(400, 499);
    return undefined;
  }
}

// Pieces hostile names are made of: traversal, encodings, separators, reserved words, odd unicode.
const hostilePart = fc.oneof(
  fc.constantFrom('..', '.', '', '...', '%2e%2e', '%2f', '..%2f', '\\', '~', '-x', '.git', 'a.git', 'x.GIT', 'internal', 'repos', 'health', '\0', '\n', ' ', 'é', '𝒳'),
  fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/),
  fc.string({ unit: 'binary', maxLength: 12 }),
);
const mostlyName = fc.oneof({ arbitrary: fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9._-]{0,11}$/), weight: 3 }, { arbitrary: hostilePart, weight: 1 });
const hostileId = fc.oneof(
  fc.tuple(mostlyName, mostlyName).map(([a, b]) => `${a}/${b}`),
  fc.array(hostilePart, { maxLength: 5 }).map((parts) => parts.join('/')),
  fc.string({ maxLength: 40 }),
  fc.anything(),
);
const hostileNumber = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(-1, 0, 1, 2 ** 53, 2 ** 60, VERSION_MAX, VERSION_MAX + 1, Number.NaN, Infinity), fc.string({ maxLength: 4 }), fc.constant(null));
const hostileRef = fc.oneof(
  fc.constantFrom('refs/heads/main', 'refs/heads/a\nb', 'refs/lost+found/x/y', 'refs/quorum-fetch/x', 'HEAD', 'refs/x', 'refs/heads/../x', 'refs/heads/x.lock', 'refs/heads/a b'),
  fc.array(hostilePart, { minLength: 1, maxLength: 4 }).map((parts) => `refs/${parts.join('/')}`),
  fc.anything(),
);
// Mostly good, sometimes hostile: so that whole messages and answers are sometimes taken.
const mostlyNumber = fc.oneof({ arbitrary: fc.nat({ max: 1000 }), weight: 4 }, { arbitrary: hostileNumber, weight: 1 });
const mostlyRef = fc.oneof({ arbitrary: fc.stringMatching(/^refs\/(heads|tags)\/[a-z0-9]{1,8}$/), weight: 4 }, { arbitrary: hostileRef, weight: 1 });
const oid = fc.oneof(fc.stringMatching(/^[0-9a-f]{40}$/), fc.string({ maxLength: 41 }));
const op = fc.oneof(
  fc.record({ kind: fc.constantFrom('create', 'delete', 'push', 'x'), repoId: hostileId }, { requiredKeys: ['kind'] }),
  fc.record({
    kind: fc.constant('push'),
    repoId: hostileId,
    base: fc.record({ epoch: mostlyNumber, generation: mostlyNumber }),
    updates: fc.array(fc.record({ ref: mostlyRef, old: oid, new: oid }), { maxLength: 3 }),
    head: mostlyRef,
  }, { requiredKeys: ['kind', 'repoId', 'updates', 'base'] }),
);
const message = fc.oneof(
  fc.record({ type: fc.constant('prepare'), txnId: fc.oneof(fc.constantFrom('t-1', '..', '.', 'a/b', ''), fc.string()), op, coordinator: fc.oneof(fc.constantFrom(...NODES), fc.string()) }),
  fc.record({ type: fc.constant('commitTxn'), txnId: fc.constantFrom('t-1', '..'), epoch: mostlyNumber, generation: mostlyNumber, final: fc.oneof(fc.boolean(), fc.anything()), acceptors: fc.oneof(fc.subarray(NODES), fc.anything()) }, { requiredKeys: ['type', 'txnId'] }),
  fc.record({ type: fc.constant('abortTxn'), txnId: fc.oneof(fc.constant('t-1'), fc.anything()) }),
  fc.jsonValue(),
  fc.anything(),
);

describe('untrusted input (property-based)', () => {
  beforeEach(() => {
    tally.taken = 0;
    tally.refused = 0;
  });
  afterEach(function () {
    if (this.currentTest?.state !== 'passed') return;
    // Both sides of each property were exercised.
    expect(tally.taken, 'inputs taken').to.be.greaterThan(0);
    expect(tally.refused, 'inputs refused').to.be.greaterThan(0);
    process.stdout.write(`      (${tally.taken} taken, ${tally.refused} refused)\n`);
  });

  it('the repo-id validator maps every accepted id inside DATA_DIR/repos and refuses the rest with a 4xx', () => {
    fc.assert(
      fc.property(hostileId, (value) => {
        const id = valueOr4xx(() => parseRepoId(value));
        if (id) expectInsideRepos(`${id.owner}/${id.name}`);
      }),
      RUNS,
    );
  });

  it('the router maps no URL outside DATA_DIR/repos (or its own staging) and answers none with a 5xx', () => {
    const segment = fc.oneof(hostilePart, fc.constantFrom('repos', 'internal', 'txn', 'prepare', 'push', 'repo-state', 'info', 'refs', 'git-upload-pack', 'git-receive-pack', `pack-${'a'.repeat(40)}.pack`));
    const url = fc.tuple(fc.array(segment, { maxLength: 6 }), fc.oneof(fc.constant(''), fc.constantFrom('?service=git-upload-pack', '?refs=1', '?x=%2e%2e'), fc.string({ maxLength: 10 }).map((q) => `?${q}`)))
      .map(([parts, query]) => `/${parts.join('/')}${query}`);
    // Near misses: every route's shape with hostile pieces in its slots.
    const shaped = fc.tuple(mostlyName, mostlyName, fc.constantFrom('', '.git'), fc.constantFrom('', '?service=git-upload-pack', '?service=git-receive-pack', '?refs=1&digest=1')).chain(([a, b, suffix, query]) =>
      fc.constantFrom(
        `/repos/${a}/${b}`,
        `/${a}/${b}${suffix}/info/refs${query}`,
        `/${a}/${b}${suffix}/git-upload-pack`,
        `/${a}/${b}${suffix}/git-receive-pack`,
        `/internal/repo-state/${a}/${b}${query}`,
        `/internal/txn/${a}${query}`,
        `/internal/push/${a}/pack-${'a'.repeat(40)}.pack`,
        `/internal/push/t-1/${b}`,
      ),
    );
    const anyUrl = fc.oneof(shaped, shaped, url, fc.string({ maxLength: 60 }), fc.string({ maxLength: 60 }).map((s) => `/${s}`));
    const method = fc.oneof({ arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE'), weight: 3 }, { arbitrary: fc.constantFrom('HEAD', 'PATCH', 'OPTIONS', 'TRACE', 'X', ''), weight: 1 });
    fc.assert(
      fc.property(method, anyUrl, (m, u) => {
        const target = valueOr4xx(() => route(m, u));
        if (target === undefined) return;
        if ('repoId' in target && target.repoId !== undefined) expectInsideRepos(target.repoId);
        if (target.kind === 'internalPackUpload' || target.kind === 'internalQuery') {
          const dir = store.incomingDir(target.txnId);
          expect(path.dirname(dir), dir).to.equal(path.join(DATA_DIR, 'incoming'));
          expect(path.basename(dir)).not.to.be.oneOf(['.', '..']);
        }
        if (target.kind === 'internalPackStage') {
          const dir = store.incomingDir(target.stageId);
          expect(path.dirname(dir), dir).to.equal(path.join(DATA_DIR, 'incoming'));
          expect(path.basename(dir)).to.match(/^stage-[0-9a-f]{24}$/);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('the internal message parser yields only messages whose repo, refs and versions are valid, else a 400', () => {
    fc.assert(
      fc.property(message, fc.constantFrom('prepare', 'commitTxn', 'abortTxn') as fc.Arbitrary<'prepare' | 'commitTxn' | 'abortTxn'>, (body, expected) => {
        const parsed = valueOr4xx(() => parseTxnMessage(body, expected, { maxRefsPerPush: 5, nodes: NODES }));
        if (!parsed) return;
        const { msg } = parsed;
        expect(msg.type).to.equal(expected);
        if (msg.type === 'prepare') {
          expectInsideRepos(msg.op.repoId);
          expect(NODES).to.include(msg.coordinator);
          if (msg.op.kind === 'push') {
            for (const u of msg.op.updates) expect(refNameProblem(u.ref)).to.equal(undefined);
            for (const n of [msg.op.base.epoch, msg.op.base.generation]) expect(Number.isInteger(n) && n >= 0 && n <= VERSION_MAX).to.equal(true);
          }
        }
        if (msg.type === 'commitTxn') {
          for (const n of [msg.epoch, msg.generation]) expect(Number.isInteger(n) && n >= 0 && n <= VERSION_MAX).to.equal(true);
        }
      }),
      RUNS,
    );
  });

  it('a peer catalog keeps only entries with a valid id, a known state and a plausible version', () => {
    const entry = fc.oneof(fc.record({ state: fc.constantFrom('live', 'deleted', 'zombie'), epoch: mostlyNumber, generation: mostlyNumber }, { requiredKeys: ['state'] }), fc.anything());
    const catalog = fc.oneof(
      fc.dictionary(hostileId.filter((k): k is string => typeof k === 'string'), entry, { maxKeys: 6 }).map((repos) => ({ repos })),
      fc.anything(),
    );
    fc.assert(
      fc.property(catalog, (answer) => {
        const parsed = valueOr4xx(() => parseCatalog(answer));
        if (!parsed) return;
        for (const [repoId, e] of Object.entries(parsed.repos)) {
          expectInsideRepos(repoId);
          expect(e.state).to.be.oneOf(['live', 'deleted']);
          for (const n of [e.epoch, e.generation]) expect(Number.isInteger(n) && n >= 0 && n <= VERSION_MAX).to.equal(true);
        }
      }),
      RUNS,
    );
  });

  it('a peer repo-state answer yields only refs git would take as names (nothing to inject into update-ref)', () => {
    const answer = fc.record({
      repo_id: fc.constantFrom('alice/demo', 'alice/demo', '../pwn'),
      live: fc.oneof(fc.boolean(), fc.boolean(), fc.anything()),
      epoch: mostlyNumber,
      generation: mostlyNumber,
      refs: fc.dictionary(mostlyRef.filter((r): r is string => typeof r === 'string'), oid, { maxKeys: 3 }),
      head: mostlyRef,
    }, { requiredKeys: ['repo_id', 'live', 'epoch', 'generation'] });
    fc.assert(
      fc.property(fc.oneof(answer, fc.anything()), (value) => {
        const parsed = valueOr4xx(() => parseRepoState(value, 'alice/demo'));
        if (!parsed) return;
        for (const ref of Object.keys(parsed.refs ?? {})) expect(refNameProblem(ref), ref).to.equal(undefined);
        if (parsed.head !== undefined) expect(refNameProblem(parsed.head)).to.equal(undefined);
      }),
      RUNS,
    );
  });

  it('a membership message declares dead only one of the cluster\'s other nodes, at most N - W of them; anything else is a 4xx', () => {
    const cluster = { self: NODES[0]!, nodes: NODES, quorum: 2 };
    const body = fc.oneof(
      fc.record({ node: fc.oneof(fc.constantFrom(...NODES, `${NODES[1]}/`, '../x', ''), fc.string({ maxLength: 3000 }), fc.anything()), dead: fc.oneof(fc.boolean(), fc.anything()) }, { requiredKeys: [] }),
      fc.jsonValue(),
      fc.anything(),
    );
    fc.assert(
      fc.property(body, fc.subarray(NODES.slice(1), { maxLength: 1 }), (value, dead) => {
        const parsed = valueOr4xx(() => parseMembership(value));
        if (!parsed) return;
        expect(parsed.node.length).to.be.at.most(2048);
        const problem = parsed.dead ? deathDeclarationProblem(parsed.node, cluster, dead) : undefined;
        if (parsed.dead && problem === undefined) {
          expect(NODES.slice(1)).to.include(parsed.node);
          expect(new Set([...dead, parsed.node]).size).to.be.at.most(NODES.length - cluster.quorum);
        }
      }),
      RUNS,
    );
  });
});
