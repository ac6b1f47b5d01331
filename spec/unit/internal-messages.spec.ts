import { expect } from 'chai';
import { QuorumGitError, statusByCode } from '../../lib/core/errors.js';
import {
  VERSION_MAX,
  commitEpochProblem,
  parseCatalog,
  parseQueryAnswer,
  parseRepoState,
  parseTxnMessage,
  parseVote,
} from '../../lib/cluster/internal-messages.js';
import type { TxnOp } from '../../lib/core/txn-core.js';

// Peers trust no message blindly (issue 8): each internal message and each answer from a peer is
// parsed into a typed value or refused with a 400, with the public API's repo-id validator.

const A = 'http://127.0.0.1:3001';
const B = 'http://127.0.0.1:3002';
const limits = { maxRefsPerPush: 10, nodes: [A, B] };
const OID1 = '1'.repeat(40);
const OID2 = '2'.repeat(40);

function refusal(fn: () => unknown): { code: string; status: number; message: string } | undefined {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof QuorumGitError)) throw err;
    return { code: err.code, status: statusByCode[err.code], message: err.message };
  }
  return undefined;
}

const prepare = (op: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ type: 'prepare', txnId: 'n1-abc', op, coordinator: B, ...extra });
const push = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  kind: 'push',
  repoId: 'alice/demo',
  updates: [{ ref: 'refs/heads/main', old: OID1, new: OID2 }],
  base: { epoch: 1, generation: 3 },
  ...extra,
});

describe('internal message parser', () => {
  it('takes well-formed prepare, commit and abort messages as they are', () => {
    const create = prepare({ kind: 'create', repoId: 'alice/demo' });
    expect(parseTxnMessage(create, 'prepare', limits)).to.deep.equal({ msg: create });
    const p = prepare(push({ head: 'refs/heads/main' }), { inlineFiles: { [`pack-${'a'.repeat(40)}.pack`]: Buffer.from('PACK').toString('base64') } });
    const parsed = parseTxnMessage(p, 'prepare', limits);
    expect(parsed.msg).to.deep.equal({ type: 'prepare', txnId: 'n1-abc', op: push({ head: 'refs/heads/main' }), coordinator: B });
    expect(parsed.inlineFiles).to.deep.equal({ [`pack-${'a'.repeat(40)}.pack`]: Buffer.from('PACK') });
    const commit = { type: 'commitTxn', txnId: 't', epoch: 2, generation: 0, final: false, acceptors: [A, B] };
    expect(parseTxnMessage(commit, 'commitTxn', limits)).to.deep.equal({ msg: commit });
    expect(parseTxnMessage({ type: 'abortTxn', txnId: 't' }, 'abortTxn', limits)).to.deep.equal({ msg: { type: 'abortTxn', txnId: 't' } });
  });

  const refused: [string, unknown, 'prepare' | 'commitTxn' | 'abortTxn', string][] = [
    ["a prepare of '../pwn'", prepare({ kind: 'create', repoId: '../pwn' }), 'prepare', 'invalid_repo_id'],
    ["a prepare of '..'", prepare({ kind: 'create', repoId: '..' }), 'prepare', 'invalid_repo_id'],
    ['a prepare with no repoId', prepare({ kind: 'create' }), 'prepare', 'invalid_body'],
    ["a prepare of 'a/../../b'", prepare({ kind: 'delete', repoId: 'a/../../b' }), 'prepare', 'invalid_repo_id'],
    ['a prepare of a reserved owner', prepare({ kind: 'create', repoId: 'internal/x' }), 'prepare', 'reserved_owner'],
    ['a prepare of a repo id with .git', prepare({ kind: 'create', repoId: 'alice/demo.git' }), 'prepare', 'invalid_repo_id'],
    ['an unknown op', prepare({ kind: 'chmod', repoId: 'alice/demo' }), 'prepare', 'invalid_body'],
    ['an unknown field', prepare({ kind: 'create', repoId: 'alice/demo', path: '/etc' }), 'prepare', 'invalid_body'],
    ['a coordinator outside the cluster', prepare({ kind: 'create', repoId: 'alice/demo' }, { coordinator: 'http://10.6.6.6:1' }), 'prepare', 'invalid_body'],
    ['a coordinator that is not an origin', prepare({ kind: 'create', repoId: 'alice/demo' }, { coordinator: `${B}/x` }), 'prepare', 'invalid_body'],
    ["a txnId of '..'", prepare({ kind: 'create', repoId: 'alice/demo' }, { txnId: '..' }), 'prepare', 'invalid_body'],
    ['a push to a hidden namespace', prepare(push({ updates: [{ ref: 'refs/lost+found/x/y', old: OID1, new: OID2 }] })), 'prepare', 'invalid_body'],
    ['a push with a newline in a ref', prepare(push({ updates: [{ ref: 'refs/heads/a\ndelete refs/heads/main', old: OID1, new: OID2 }] })), 'prepare', 'invalid_body'],
    ['a push with a short oid', prepare(push({ updates: [{ ref: 'refs/heads/main', old: '1', new: OID2 }] })), 'prepare', 'invalid_body'],
    ['a push with too many refs', prepare(push({ updates: Array.from({ length: 11 }, (_, i) => ({ ref: `refs/heads/b${i}`, old: OID1, new: OID2 })) })), 'prepare', 'invalid_body'],
    ['a push with a negative base', prepare(push({ base: { epoch: -1, generation: 0 } })), 'prepare', 'invalid_body'],
    ['inline files with a create', prepare({ kind: 'create', repoId: 'alice/demo' }, { inlineFiles: {} }), 'prepare', 'invalid_body'],
    ['an inline file named like a path', prepare(push(), { inlineFiles: { '../../x.pack': 'AAAA' } }), 'prepare', 'invalid_body'],
    ['an inline file that is not base64', prepare(push(), { inlineFiles: { [`pack-${'a'.repeat(40)}.pack`]: 'not base64!' } }), 'prepare', 'invalid_body'],
    ['a commit at epoch 1.5', { type: 'commitTxn', txnId: 't', epoch: 1.5, generation: 0 }, 'commitTxn', 'invalid_body'],
    ['a commit at a negative generation', { type: 'commitTxn', txnId: 't', epoch: 1, generation: -1 }, 'commitTxn', 'invalid_body'],
    ['a commit beyond Number.MAX_SAFE_INTEGER', { type: 'commitTxn', txnId: 't', epoch: 2 ** 60, generation: 0 }, 'commitTxn', 'invalid_body'],
    ['a commit just beyond VERSION_MAX', { type: 'commitTxn', txnId: 't', epoch: VERSION_MAX + 1, generation: 0 }, 'commitTxn', 'invalid_body'],
    ['a commit at epoch "2"', { type: 'commitTxn', txnId: 't', epoch: '2', generation: 0 }, 'commitTxn', 'invalid_body'],
    ['a commit naming a stranger as acceptor', { type: 'commitTxn', txnId: 't', epoch: 2, generation: 0, acceptors: [A, 'http://10.6.6.6:1'] }, 'commitTxn', 'invalid_body'],
    ['a commit with final: "yes"', { type: 'commitTxn', txnId: 't', epoch: 2, generation: 0, final: 'yes' }, 'commitTxn', 'invalid_body'],
    ['a commit posted as an abort', { type: 'commitTxn', txnId: 't', epoch: 2, generation: 0 }, 'abortTxn', 'invalid_body'],
    ['an array', [], 'abortTxn', 'invalid_body'],
    ['null', null, 'prepare', 'invalid_body'],
  ];
  for (const [what, body, expected, code] of refused) {
    it(`refuses ${what} with a 400 ${code}`, () => {
      const answer = refusal(() => parseTxnMessage(body, expected, limits));
      expect(answer, 'accepted').not.to.equal(undefined);
      expect(answer!.code).to.equal(code);
      expect(answer!.status).to.equal(400);
    });
  }
});

describe('commit plausibility', () => {
  const del: TxnOp = { kind: 'delete', repoId: 'alice/demo' };
  it('takes a create or delete one epoch above the replica', () => {
    expect(commitEpochProblem(del, { epoch: 1, generation: 7 }, 2)).to.equal(undefined);
    expect(commitEpochProblem({ kind: 'create', repoId: 'alice/demo' }, { epoch: 0, generation: 0 }, 1)).to.equal(undefined);
  });
  it('refuses a delete at epoch 99 on a replica at epoch 1 (left to recovery, which asks the coordinator)', () => {
    expect(commitEpochProblem(del, { epoch: 1, generation: 0 }, 99)).to.match(/not plausible/);
  });
  it('leaves pushes and unknown transactions to the core', () => {
    expect(commitEpochProblem(undefined, { epoch: 1, generation: 0 }, 99)).to.equal(undefined);
    expect(commitEpochProblem({ kind: 'push', repoId: 'alice/demo', updates: [], base: { epoch: 1, generation: 0 } }, { epoch: 1, generation: 0 }, 99)).to.equal(undefined);
  });
});

describe('answers from peers', () => {
  it('drops catalog entries with a bad id or an implausible version, keeps the rest', () => {
    const { repos, dropped } = parseCatalog({
      repos: {
        'alice/demo': { state: 'live', epoch: 1, generation: 4 },
        'bob/gone': { state: 'deleted', epoch: 2 },
        '../pwn': { state: 'live', epoch: 1, generation: 0 },
        'x/negative': { state: 'live', epoch: -1, generation: 0 },
        'x/fraction': { state: 'live', epoch: 1.5, generation: 0 },
        'x/huge': { state: 'deleted', epoch: 2 ** 53, generation: 0 },
        'x/zombie': { state: 'zombie', epoch: 1, generation: 0 },
        'x/nothing': null,
      },
    });
    expect(repos).to.deep.equal({ 'alice/demo': { state: 'live', epoch: 1, generation: 4 }, 'bob/gone': { state: 'deleted', epoch: 2, generation: 0 } });
    expect(dropped.map((d) => d.repoId)).to.deep.equal(['"../pwn"', '"x/negative"', '"x/fraction"', '"x/huge"', '"x/zombie"', '"x/nothing"']);
  });

  it('refuses an answer that is not a catalog', () => {
    expect(refusal(() => parseCatalog({ repos: [] }))?.code).to.equal('invalid_body');
    expect(refusal(() => parseCatalog('x'))?.code).to.equal('invalid_body');
  });

  it('checks votes and query answers', () => {
    expect(parseVote({ vote: 'no', code: 'stale', detail: 'x' })).to.deep.equal({ vote: 'no', code: 'stale', detail: 'x' });
    expect(refusal(() => parseVote({ vote: 'yes', epoch: -1, generation: 0 }))?.code).to.equal('invalid_body');
    expect(refusal(() => parseVote({ vote: 'no', code: 'whatever' }))?.code).to.equal('invalid_body');
    expect(parseQueryAnswer({ outcome: 'committed', epoch: 3, generation: 0, acceptors: [A] })).to.deep.equal({ outcome: 'committed', epoch: 3, generation: 0, acceptors: [A] });
    expect(refusal(() => parseQueryAnswer({ outcome: 'maybe' }))?.code).to.equal('invalid_body');
    expect(refusal(() => parseQueryAnswer({ outcome: 'committed', epoch: 1e300 }))?.code).to.equal('invalid_body');
    // What the node holds of the repo the asker named (recovery's `movedOn`).
    const repo = { epoch: 1, generation: 4, settingsVersion: 0, held: false };
    expect(parseQueryAnswer({ outcome: 'refused', repo })).to.deep.equal({ outcome: 'refused', repo });
    expect(refusal(() => parseQueryAnswer({ outcome: 'refused', repo: { ...repo, held: 'no' } }))?.code).to.equal('invalid_body');
    expect(refusal(() => parseQueryAnswer({ outcome: 'refused', repo: { ...repo, extra: 1 } }))?.code).to.equal('invalid_body');
    expect(refusal(() => parseQueryAnswer({ outcome: 'refused', repo: { ...repo, generation: -1 } }))?.code).to.equal('invalid_body');
  });

  it('refuses a repo-state answer about another repo, or with refs git would not take', () => {
    const good = { repo_id: 'alice/demo', live: true, epoch: 1, generation: 2, refs: { 'refs/heads/main': OID1 }, head: 'refs/heads/main', locked: false };
    expect(parseRepoState(good, 'alice/demo')).to.deep.equal(good);
    expect(refusal(() => parseRepoState(good, 'alice/other'))?.code).to.equal('invalid_body');
    expect(refusal(() => parseRepoState({ ...good, refs: { 'refs/heads/x\ndelete refs/heads/main': OID1 } }, 'alice/demo'))?.code).to.equal('invalid_body');
    expect(refusal(() => parseRepoState({ ...good, refs: { 'refs/heads/x': 'HEAD' } }, 'alice/demo'))?.code).to.equal('invalid_body');
    expect(refusal(() => parseRepoState({ ...good, head: '../../config' }, 'alice/demo'))?.code).to.equal('invalid_body');
  });
});
