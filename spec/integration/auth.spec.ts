import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { pickCoordinator } from '../../lib/core/routing.js';
import { AUTH_CLUSTER_ENV, ALICE_READ_TOKEN as aliceRead, ALICE_WRITE_TOKEN as aliceWrite, PASSWORDS, basic, withCredentials, writeSpecUsersFile } from '../support/auth-fixture.js';
import { type Cluster, type GitClient, type TestNode, eventually, http, withCluster } from '../support/cluster.js';

// Users, tokens and permissions on a 3-node cluster with AUTH_FILE (the same file for every node):
// git over HTTP Basic with a password and with a token, the answers that make git ask for credentials
// (401) or stop (403, 404), creates under one's own name, a receive-pack POST replayed without its
// info/refs, a push proxied to the coordinator, and the audit log (never holding a token).
// The users file and the credentials are repo-settings.spec's too (spec/support/auth-fixture.ts).

const ZERO = '0'.repeat(40);
const CHALLENGE = 'Basic realm="quorum-git"';

/** A receive-pack request body as git sends it after info/refs: one command, no pack (a delete needs none). */
function receivePackBody(oldOid: string, newOid: string, ref: string): string {
  const line = `${oldOid} ${newOid} ${ref}\0report-status delete-refs\n`;
  return `${(line.length + 4).toString(16).padStart(4, '0')}${line}0000`;
}

describe('users, tokens and permissions (3-node cluster with AUTH_FILE)', function () {
  let cluster: Cluster;
  let git: GitClient;
  const repoId = 'alice/proj';
  let initial: { dir: string; oid: string };

  before(writeSpecUsersFile);
  // Nodes stay up here, so long protocol timeouts cost nothing and keep a loaded machine's slow
  // prepare from failing a push (as in the git-http spec).
  withCluster(3, { env: { ...AUTH_CLUSTER_ENV } }, (c, g) => {
    [cluster, git] = [c, g];
  });

  /** The oid of `ref` on every node ('' where it does not exist), read from the files: polling with git would cost a process per node per look. */
  async function refEverywhere(ref: string): Promise<string[]> {
    const read = (file: string): Promise<string> => fs.readFile(file, 'utf8').catch(() => '');
    return Promise.all(
      cluster.nodes.map(async (n) => {
        const loose = (await read(path.join(n.repoDir(repoId), ref))).trim();
        if (loose !== '') return loose;
        const packed = (await read(path.join(n.repoDir(repoId), 'packed-refs'))).split('\n').find((l) => l.endsWith(` ${ref}`));
        return packed?.split(' ')[0] ?? '';
      }),
    );
  }

  /** Waits until every node holds `ref` at `oid` ('' for gone). */
  function everywhere(ref: string, oid: string): Promise<void> {
    return eventually(async () => {
      expect(await refEverywhere(ref)).to.deep.equal([oid, oid, oid]);
    }, 20_000, 100);
  }

  function createRepo(node: TestNode, id: string, headers: Record<string, string>): ReturnType<typeof http> {
    return http(`${node.url}/repos`, { json: { repo_id: id }, headers });
  }

  it('lets a user create a repo under their own name and push to it with the password git sends from the URL', async function () {
    const res = await createRepo(cluster.node(1), repoId, basic('alice', PASSWORDS.alice));
    expect(res.status, res.text).to.equal(201);
    for (const node of cluster.nodes) await eventually(async () => expect((await http(`${node.url}/repos/${repoId}`, { headers: basic('alice', PASSWORDS.alice) })).status).to.equal(200));
    initial = await git.commitRepo('initial');
    await git.ok(['push', withCredentials(cluster.node(2).gitUrl(repoId), 'alice', PASSWORDS.alice), 'HEAD:refs/heads/main'], { cwd: initial.dir });
    await everywhere('refs/heads/main', initial.oid);
    const clone = path.join(await git.tempDir('clone'), 'proj');
    await git.ok(['clone', '--quiet', withCredentials(cluster.node(3).gitUrl(repoId), 'alice', PASSWORDS.alice), clone]);
    expect((await git.ok(['rev-parse', 'HEAD'], { cwd: clone })).trim()).to.equal(initial.oid);
  });

  it('answers an anonymous push, clone or create with 401 and the Basic challenge, so git asks for credentials', async function () {
    for (const service of ['git-receive-pack', 'git-upload-pack']) {
      const res = await http(`${cluster.node(1).url}/${repoId}.git/info/refs?service=${service}`);
      expect(res.status, service).to.equal(401);
      expect(res.headers.get('www-authenticate')).to.equal(CHALLENGE);
    }
    const create = await createRepo(cluster.node(1), 'alice/anon', {});
    expect(create.status).to.equal(401);
    expect(create.headers.get('www-authenticate')).to.equal(CHALLENGE);
    expect(create.body.error.code).to.equal('unauthorized');
    const push = await git.run(['push', cluster.node(1).gitUrl(repoId), 'HEAD:refs/heads/anon'], { cwd: initial.dir });
    expect(push.code).to.not.equal(0);
    expect(push.stderr).to.match(/could not read Username/);
    expect(await refEverywhere('refs/heads/anon')).to.deep.equal(['', '', '']);
  });

  it('pushes with a token handed over by a git credential helper', async function () {
    const helper = `!f() { test "$1" = get && printf 'username=alice\\npassword=${aliceWrite.token}\\n'; }; f`;
    await git.ok(['-c', `credential.helper=${helper}`, 'push', cluster.node(1).gitUrl(repoId), 'HEAD:refs/heads/by-token'], { cwd: initial.dir });
    await everywhere('refs/heads/by-token', initial.oid);
    const api = await http(`${cluster.node(2).url}/repos/${repoId}`, { headers: { authorization: `Bearer ${aliceWrite.token}` } });
    expect(api.status).to.equal(200);
  });

  it('lets a read-only token clone but answers its push with 403', async function () {
    const url = withCredentials(cluster.node(1).gitUrl(repoId), 'alice', aliceRead.token);
    expect(await git.ok(['ls-remote', url, 'refs/heads/main'])).to.include(initial.oid);
    const push = await git.run(['push', url, 'HEAD:refs/heads/read-only'], { cwd: initial.dir });
    expect(push.code).to.not.equal(0);
    expect(push.stderr).to.match(/403/);
    expect(await refEverywhere('refs/heads/read-only')).to.deep.equal(['', '', '']);
    const del = await http(`${cluster.node(1).url}/repos/${repoId}`, { method: 'DELETE', headers: { authorization: `Bearer ${aliceWrite.token}` } });
    expect(del.status, 'a write token may not delete').to.equal(403);
    expect(del.body.error.code).to.equal('forbidden');
  });

  it("hides another user's private repo (404, as if it did not exist) and refuses creating under another name (403), but not to an admin, who may delete it too", async function () {
    const bob = basic('bob', PASSWORDS.bob);
    const clone = await git.run(['ls-remote', withCredentials(cluster.node(2).gitUrl(repoId), 'bob', PASSWORDS.bob)]);
    expect(clone.code).to.not.equal(0);
    expect(clone.stderr).to.match(/not found/);
    const push = await git.run(['push', withCredentials(cluster.node(2).gitUrl(repoId), 'bob', PASSWORDS.bob), 'HEAD:refs/heads/bob'], { cwd: initial.dir });
    expect(push.code).to.not.equal(0);
    expect(await refEverywhere('refs/heads/bob')).to.deep.equal(['', '', '']);
    const hidden = await http(`${cluster.node(2).url}/repos/${repoId}`, { headers: bob });
    const missing = await http(`${cluster.node(2).url}/repos/alice/none`, { headers: bob });
    expect(hidden.status).to.equal(404);
    expect(JSON.stringify(hidden.body).split(repoId).join('X')).to.equal(JSON.stringify(missing.body).split('alice/none').join('X'));
    expect((await http(`${cluster.node(2).url}/repos/${repoId}`, { method: 'DELETE', headers: bob })).status).to.equal(404);

    const refused = await createRepo(cluster.node(2), 'alice/by-bob', bob);
    expect(refused.status).to.equal(403);
    expect(refused.body.error.code).to.equal('forbidden');
    const byAdmin = await createRepo(cluster.node(2), 'bob/by-root', basic('root', PASSWORDS.root));
    expect(byAdmin.status, byAdmin.text).to.equal(201);
    const listed = await http(`${cluster.node(2).url}/repos`, { headers: bob });
    expect(listed.body.repos).to.deep.equal(['bob/by-root']);
    const deleted = await http(`${cluster.node(3).url}/repos/bob/by-root`, { method: 'DELETE', headers: basic('root', PASSWORDS.root) });
    expect(deleted.status, deleted.text).to.equal(204);
    expect((await cluster.repoEverywhere('alice/by-bob')).every((r) => !r.onDisk)).to.equal(true);
  });

  it('authorizes a receive-pack POST replayed without its info/refs: 401, 404, 403 and nothing changes; with write access the same request works', async function () {
    await git.ok(['push', withCredentials(cluster.node(1).gitUrl(repoId), 'alice', aliceWrite.token), 'HEAD:refs/heads/scratch'], { cwd: initial.dir });
    await everywhere('refs/heads/scratch', initial.oid);
    const replay = (headers: Record<string, string>): ReturnType<typeof http> =>
      http(`${cluster.node(1).url}/${repoId}.git/git-receive-pack`, {
        body: receivePackBody(initial.oid, ZERO, 'refs/heads/scratch'),
        headers: { 'content-type': 'application/x-git-receive-pack-request', ...headers },
      });
    const anonymous = await replay({});
    expect(anonymous.status).to.equal(401);
    expect(anonymous.headers.get('www-authenticate')).to.equal(CHALLENGE);
    expect((await replay(basic('bob', PASSWORDS.bob))).status).to.equal(404);
    expect((await replay(basic('alice', aliceRead.token))).status).to.equal(403);
    expect((await replay(basic('alice', 'wrong-password-9'))).status).to.equal(401);
    expect(await refEverywhere('refs/heads/scratch')).to.deep.equal([initial.oid, initial.oid, initial.oid]);
    const allowed = await replay(basic('alice', aliceWrite.token));
    expect(allowed.status).to.equal(200);
    expect(allowed.text).to.include('ok refs/heads/scratch');
    await everywhere('refs/heads/scratch', '');
  });

  it("authorizes a push through a node that is not the repo's coordinator, the credentials going along", async function () {
    const coordinator = pickCoordinator(repoId, cluster.nodes.map((n) => n.url))!;
    const entry = cluster.nodes.find((n) => n.url !== coordinator)!;
    await git.ok(['push', withCredentials(entry.gitUrl(repoId), 'alice', aliceWrite.token), 'HEAD:refs/heads/proxied'], { cwd: initial.dir });
    await everywhere('refs/heads/proxied', initial.oid);
    // Audited where its hook ran: the coordinator (or the entry itself, had a missed heartbeat made it coordinate).
    const line = cluster.nodes.flatMap(auditLines).find((l) => l.audit === 'push' && (l.refs as string[]).some((r) => r.startsWith('refs/heads/proxied ')));
    expect(line).to.deep.include({ user: 'alice', via: 'token', token_name: 'laptop', repo_id: repoId, outcome: 'committed', refs_total: 1 });
    expect(line!.txn_id).to.be.a('string');
    expect(line!.refs).to.deep.equal([`refs/heads/proxied ${ZERO} -> ${initial.oid}`]);
  });

  it('authorizes again on the node a request is proxied to; a peer\'s own request (catch-up) is authorized by the cluster secret', async function () {
    const node = cluster.node(1);
    const advertise = (headers: Record<string, string>): ReturnType<typeof http> =>
      http(`${node.url}/${repoId}.git/info/refs?service=git-receive-pack`, { headers: { 'x-quorum-secret': cluster.secret, ...headers } });
    // As a peer proxies a client's request: the client's credentials decide.
    const proxiedAnonymous = await advertise({ 'x-quorum-proxied': '1' });
    expect(proxiedAnonymous.status).to.equal(401);
    expect(proxiedAnonymous.headers.get('www-authenticate')).to.equal(CHALLENGE);
    expect((await advertise({ 'x-quorum-proxied': '1', ...basic('bob', PASSWORDS.bob) })).status).to.equal(404);
    expect((await advertise({ 'x-quorum-proxied': '1', ...basic('alice', aliceRead.token) })).status).to.equal(403);
    expect((await advertise({ 'x-quorum-proxied': '1', ...basic('alice', aliceWrite.token) })).status).to.equal(200);
    // A peer's own fetch carries no user.
    expect((await advertise({})).status).to.equal(200);
  });

  it('writes an audit line for every create, push and denial, and never a token, a password or an Authorization header', async function () {
    const lines = cluster.nodes.flatMap(auditLines);
    const create = lines.find((l) => l.audit === 'create' && l.repo_id === repoId);
    expect(create).to.deep.include({ user: 'alice', via: 'password', outcome: 'committed' });
    expect(create!.txn_ids).to.have.length.greaterThan(0);
    expect(lines.find((l) => l.audit === 'create' && l.repo_id === 'bob/by-root')).to.deep.include({ user: 'root', outcome: 'committed' });
    expect(lines.find((l) => l.audit === 'delete' && l.repo_id === 'bob/by-root')).to.deep.include({ user: 'root', via: 'password', outcome: 'committed' });
    expect(lines.some((l) => l.audit === 'push' && l.user === 'alice' && l.via === 'password')).to.equal(true);
    const denied = lines.filter((l) => l.audit === 'denied');
    expect(denied.some((l) => l.status === 401 && l.user === null)).to.equal(true);
    expect(denied.some((l) => l.status === 403 && l.user === 'alice' && l.token_name === 'ci')).to.equal(true);
    expect(denied.some((l) => l.status === 404 && l.user === 'bob' && l.repo_id === repoId)).to.equal(true);
    expect(denied.some((l) => l.status === 403 && l.user === 'bob' && l.repo_id === 'alice/by-bob')).to.equal(true);
    for (const node of cluster.nodes) {
      const text = node.logText();
      for (const secret of [aliceWrite.token, aliceRead.token, ...Object.values(PASSWORDS), 'qg_']) expect(text, node.serverId).to.not.include(secret);
      expect(text.toLowerCase()).to.not.include('authorization');
      expect(text).to.not.include(Buffer.from(`alice:${PASSWORDS.alice}`).toString('base64'));
    }
  });
});

function auditLines(node: TestNode): Record<string, unknown>[] {
  return node
    .logText()
    .split('\n')
    .filter((l) => l.includes('"audit"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
