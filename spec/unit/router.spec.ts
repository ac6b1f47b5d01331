import { expect } from 'chai';
import { QuorumGitError } from '../../lib/core/errors.js';
import { parseRepoId } from '../../lib/core/repo-id.js';
import { route } from '../../lib/http/router.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof QuorumGitError) return err.code;
    throw err;
  }
  return undefined;
}

describe('repo ids', () => {
  const valid = ['alice/demo', 'a/b', 'A_1/x.y-z', `${'o'.repeat(100)}/${'n'.repeat(100)}`, 'alice/demo.gitx', 'alice/_x'];
  for (const id of valid) {
    it(`accepts ${JSON.stringify(id.length > 40 ? `${id.slice(0, 20)}…` : id)}`, () => {
      expect(parseRepoId(id)).to.deep.equal({ owner: id.split('/')[0], name: id.split('/')[1] });
    });
  }
  const invalid: [unknown, string][] = [
    ['alice', 'invalid_repo_id'],
    ['alice/demo/extra', 'invalid_repo_id'],
    ['/demo', 'invalid_repo_id'],
    ['alice/', 'invalid_repo_id'],
    ['.alice/demo', 'invalid_repo_id'],
    ['-alice/demo', 'invalid_repo_id'],
    ['alice/.demo', 'invalid_repo_id'],
    ['alice/-demo', 'invalid_repo_id'],
    ['./demo', 'invalid_repo_id'],
    ['alice/..', 'invalid_repo_id'],
    ['alice/demo.git', 'invalid_repo_id'],
    ['alice/demo.GIT', 'invalid_repo_id'],
    ['al ice/demo', 'invalid_repo_id'],
    ['alice/de%2fmo', 'invalid_repo_id'],
    ['alice/dé', 'invalid_repo_id'],
    [`${'o'.repeat(101)}/x`, 'invalid_repo_id'],
    [`x/${'n'.repeat(101)}`, 'invalid_repo_id'],
    ['repos/x', 'reserved_owner'],
    ['Health/x', 'reserved_owner'],
    ['internal/x', 'reserved_owner'],
    ['metrics/x', 'reserved_owner'],
    [42, 'invalid_body'],
    [null, 'invalid_body'],
    [['a/b'], 'invalid_body'],
  ];
  for (const [id, code] of invalid) {
    it(`refuses ${JSON.stringify(id)?.slice(0, 40)} with ${code}`, () => {
      expect(codeOf(() => parseRepoId(id))).to.equal(code);
    });
  }
});

describe('router', () => {
  const table: [string, string, unknown][] = [
    ['GET', '/health', { kind: 'health' }],
    ['GET', '/health/live', { kind: 'healthLive' }],
    ['HEAD', '/health/ready', { kind: 'healthReady' }],
    ['GET', '/metrics', { kind: 'metrics' }],
    ['GET', '/repos', { kind: 'listRepos' }],
    ['POST', '/repos', { kind: 'createRepo' }],
    ['GET', '/repos/alice/demo', { kind: 'getRepo', repoId: 'alice/demo' }],
    ['DELETE', '/repos/alice/demo', { kind: 'deleteRepo', repoId: 'alice/demo' }],
    ['PATCH', '/repos/alice/demo', { kind: 'updateRepoSettings', repoId: 'alice/demo' }],
    ['GET', '/alice/demo.git/info/refs?service=git-upload-pack', { kind: 'gitInfoRefs', repoId: 'alice/demo', service: 'upload-pack' }],
    ['GET', '/alice/demo/info/refs?service=git-receive-pack', { kind: 'gitInfoRefs', repoId: 'alice/demo', service: 'receive-pack' }],
    ['POST', '/alice/demo.git/git-upload-pack', { kind: 'gitRpc', repoId: 'alice/demo', service: 'upload-pack' }],
    ['POST', '/alice/demo/git-receive-pack', { kind: 'gitRpc', repoId: 'alice/demo', service: 'receive-pack' }],
    ['GET', '/internal/txn/s1-abc?refuse=1', { kind: 'internalQuery', txnId: 's1-abc', refuse: true, asCoordinator: false }],
    ['GET', '/internal/txn/s1-abc?refuse=1&repo=alice%2Fdemo', { kind: 'internalQuery', txnId: 's1-abc', refuse: true, asCoordinator: false, repoId: 'alice/demo' }],
  ];
  for (const [method, url, expected] of table) {
    it(`routes ${method} ${url}`, () => {
      expect(route(method, url)).to.deep.equal(expected);
    });
  }

  const errors: [string, string, string][] = [
    ['GET', '/repos/%2e%2e/x', 'invalid_path'],
    ['GET', '/repos/a%2Fb/c', 'invalid_path'],
    ['DELETE', '/repos/../etc', 'invalid_path'],
    ['GET', '/repos//x', 'invalid_path'],
    ['GET', '/alice/%2e%2e/info/refs?service=git-upload-pack', 'invalid_path'],
    ['GET', '/repos/alice/demo.git', 'invalid_repo_id'],
    ['GET', '/repos/repos/x', 'reserved_owner'],
    ['GET', '/internal/txn/s1-abc?repo=..%2Fetc', 'invalid_repo_id'],
    ['PUT', '/repos', 'method_not_allowed'],
    ['POST', '/health', 'method_not_allowed'],
    ['POST', '/health/ready', 'method_not_allowed'],
    ['DELETE', '/metrics', 'method_not_allowed'],
    ['GET', '/health/other', 'not_found'],
    ['GET', '/alice/demo/git-upload-pack', 'method_not_allowed'],
    ['GET', '/alice/demo/info/refs', 'invalid_path'],
    ['GET', '/alice/.x/info/refs?service=git-upload-pack', 'repo_not_found'],
    ['GET', '/a/b/c/deep.git/info/refs?service=git-upload-pack', 'not_found'],
    ['GET', '/alice/demo/objects/info/packs', 'not_found'],
    ['GET', '/nothing', 'not_found'],
  ];
  for (const [method, url, code] of errors) {
    it(`refuses ${method} ${url} with ${code}`, () => {
      expect(codeOf(() => route(method, url))).to.equal(code);
    });
  }
});
