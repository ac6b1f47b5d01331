import path from 'node:path';
import { expect } from 'chai';
import { AUTH_CLUSTER_ENV, basic, withCredentials, writeSpecUsersFile } from '../support/auth-fixture.js';
import { type Cluster, type GitClient, eventually, http, withCluster } from '../support/cluster.js';
import { diskRefs } from '../support/push-helpers.js';

// Replicated repo settings on a 3-node cluster with AUTH_FILE: a settings change made through one node
// decides access on every node (public clone, a collaborator's push), a node that was down during a
// change adopts it (anti-entropy), protected branches refuse a force push and a delete alike whichever
// node the push goes to, and invalid changes are refused with nothing changed.
// The users file and the credentials are auth.spec's too (spec/support/auth-fixture.ts).

describe('repo settings (3-node cluster with AUTH_FILE)', function () {
  let cluster: Cluster;
  let git: GitClient;
  const repoId = 'alice/settings';
  let work: { dir: string; oid: string };

  before(writeSpecUsersFile);
  withCluster(3, { env: { ...AUTH_CLUSTER_ENV } }, (c, g) => {
    [cluster, git] = [c, g];
  });

  const patch = (n: number, json: unknown, headers = basic('alice')): ReturnType<typeof http> =>
    http(`${cluster.node(n).url}/repos/${repoId}`, { method: 'PATCH', json, headers });
  const settingsOn = async (n: number): Promise<Record<string, unknown>> => {
    const res = await http(`${cluster.node(n).url}/repos/${repoId}`, { headers: basic('alice') });
    expect(res.status, res.text).to.equal(200);
    const { visibility, collaborators, protected_branches, settings_version } = res.body;
    return { visibility, collaborators, protected_branches, settings_version };
  };
  const refsEverywhere = (): Promise<Record<string, string>[]> => Promise.all(cluster.nodes.map((n) => diskRefs(git, n, repoId)));

  it('creates a private repo with default settings, and refuses invalid changes (400) and a caller who cannot see it (404) with nothing changed', async function () {
    const created = await http(`${cluster.node(1).url}/repos`, { json: { repo_id: repoId }, headers: basic('alice') });
    expect(created.status, created.text).to.equal(201);
    work = await git.commitRepo('settings');
    await git.ok(['branch', 'release'], { cwd: work.dir });
    await git.ok(['push', withCredentials(cluster.node(1).gitUrl(repoId), 'alice'), 'HEAD:refs/heads/main', 'release:refs/heads/release'], { cwd: work.dir });
    for (const body of [{ visibility: 'secret' }, { collaborators: { bob: 'owner' } }, { protected_branches: ['a..b'] }, { colaborators: {} }, ['public']]) {
      const res = await patch(2, body);
      expect(res.status, JSON.stringify(body)).to.equal(400);
      expect(res.body.error.code).to.equal('invalid_body');
    }
    expect((await patch(2, { visibility: 'public' }, basic('bob'))).status).to.equal(404);
    const defaults = { visibility: 'private', collaborators: {}, protected_branches: [], settings_version: 0 };
    for (const n of [1, 2, 3]) expect(await settingsOn(n)).to.deep.equal(defaults);
  });

  it('makes a repo public and gives a collaborator write through one node: anonymous clone and the collaborator\'s push work through the others', async function () {
    const res = await patch(2, { visibility: 'public', collaborators: { bob: 'write' }, protected_branches: ['main', 'release'] });
    expect(res.status, res.text).to.equal(200);
    const expected = { visibility: 'public', collaborators: { bob: 'write' }, protected_branches: ['refs/heads/main', 'refs/heads/release'], settings_version: 1 };
    expect(res.body).to.deep.include(expected);
    for (const n of [1, 2, 3]) await eventually(async () => expect(await settingsOn(n)).to.deep.equal(expected), 10_000, 100);
    const audit = cluster
      .node(2)
      .logText()
      .split('\n')
      .filter((l) => l.includes('"audit":"settings"'))
      .map((l) => JSON.parse(l));
    expect(audit.map((a) => [a.user, a.repo_id, a.outcome, a.settings?.visibility])).to.deep.equal([['alice', repoId, 'committed', 'public']]);
    const clone = path.join(await git.tempDir('anon'), 'repo');
    await git.ok(['clone', '--quiet', cluster.node(3).gitUrl(repoId), clone]);
    expect((await git.ok(['rev-parse', 'HEAD'], { cwd: clone })).trim()).to.equal(work.oid);
    // bob has write, not admin: he pushes, but may not change the settings.
    await git.ok(['push', withCredentials(cluster.node(3).gitUrl(repoId), 'bob'), 'HEAD:refs/heads/bob-topic'], { cwd: work.dir });
    expect((await patch(1, { visibility: 'private' }, basic('bob'))).status).to.equal(403);
  });

  it('refuses a force push and a delete of a protected branch on every node, naming the rule, and moves nothing; a fast-forward goes through', async function () {
    await git.ok(['commit', '--quiet', '--amend', '-m', 'rewritten'], { cwd: work.dir });
    const before = await refsEverywhere();
    for (const n of [1, 2, 3]) {
      const url = withCredentials(cluster.node(n).gitUrl(repoId), 'alice');
      const force = await git.run(['push', '--force', url, 'HEAD:refs/heads/main'], { cwd: work.dir });
      expect(force.code, force.stderr).to.not.equal(0);
      expect(force.stderr).to.include('refs/heads/main is a protected branch: it cannot be moved non-fast-forward');
      const del = await git.run(['push', url, ':refs/heads/release'], { cwd: work.dir });
      expect(del.code, del.stderr).to.not.equal(0);
      expect(del.stderr).to.include('refs/heads/release is a protected branch: it cannot be deleted');
    }
    expect(await refsEverywhere()).to.deep.equal(before);
    // A fast-forward of a protected branch goes through.
    await git.ok(['reset', '--quiet', '--hard', work.oid], { cwd: work.dir });
    await git.ok(['commit', '--quiet', '--allow-empty', '-m', 'next'], { cwd: work.dir });
    const next = (await git.ok(['rev-parse', 'HEAD'], { cwd: work.dir })).trim();
    await git.ok(['push', withCredentials(cluster.node(2).gitUrl(repoId), 'alice'), 'HEAD:refs/heads/main'], { cwd: work.dir });
    await eventually(async () => expect((await refsEverywhere()).map((r) => r['refs/heads/main'])).to.deep.equal([next, next, next]), 20_000, 100);
  });

  it('a node stopped during a settings change adopts it once restarted (anti-entropy)', async function () {
    await cluster.node(3).stop();
    const res = await patch(1, { visibility: 'private' });
    expect(res.status, res.text).to.equal(200);
    expect(res.body.settings_version).to.equal(2);
    await cluster.node(3).start();
    await eventually(async () => expect((await settingsOn(3)).settings_version).to.equal(2), 15_000, 100);
    expect((await settingsOn(3)).visibility).to.equal('private');
    const anonymous = await http(`${cluster.node(3).url}/${repoId}.git/info/refs?service=git-upload-pack`);
    expect(anonymous.status).to.equal(401);
  });
});
