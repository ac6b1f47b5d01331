import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { pickCoordinator } from '../../lib/core/routing.js';
import { GitClient, SPEC_NODE_ENV, TestNode, eventually, freePorts, http, specLaunch } from '../support/cluster.js';
import { SECRET_HEADER, commitFile, expectPushed } from '../support/push-helpers.js';

// TLS (issue 8): three nodes serve HTTPS with certificates of a throwaway CA made here with openssl,
// list each other as https:// peers trusted through TLS_CA, and git clones and pushes over https
// with GIT_SSL_CAINFO. The pre-receive hook still reaches its node over plain HTTP on loopback.

const run = promisify(execFile);

/** A CA and one certificate for 127.0.0.1 signed by it (P-256 keys: quick to make). */
async function makeCertificates(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const f = (name: string): string => path.join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=quorum-git spec CA']);
  await run('openssl', ['req', ...ec, '-keyout', f('node.key'), '-out', f('node.csr'), '-subj', '/CN=127.0.0.1']);
  await fs.writeFile(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n');
  await run('openssl', ['x509', '-req', '-in', f('node.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('node.crt'), '-days', '2', '-extfile', f('ext.cnf')]);
  return { ca: f('ca.crt'), cert: f('node.crt'), key: f('node.key') };
}

/** A JSON request over https trusting only `ca`. */
function httpsJson(url: string, ca: Buffer, options: { method?: string; json?: unknown } = {}): Promise<{ status: number; body: any }> {
  const payload = options.json === undefined ? undefined : JSON.stringify(options.json);
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: options.method ?? (payload ? 'POST' : 'GET'), ca, timeout: 15_000, headers: payload ? { 'content-type': 'application/json' } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${url} timed out`)));
    req.on('error', reject);
    req.end(payload);
  });
}

describe('TLS: a 3-node cluster over https', function () {
  let root: string;
  let ca: Buffer;
  let nodes: TestNode[];
  let urls: string[];
  let git: GitClient;

  const waitHealthy = (node: TestNode, url: string): Promise<void> =>
    eventually(async () => {
      const res = await httpsJson(`${url}/health`, ca);
      expect(res.body.peers_reachable, `${node.serverId}: the peers over https`).to.equal(2);
    }, 30_000, 100);

  before(async function () {
    root = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'quorum-git-spec-tls-')));
    const [files, ports] = await Promise.all([makeCertificates(root), freePorts(3)]);
    ca = await fs.readFile(files.ca);
    urls = ports.map((p) => `https://127.0.0.1:${p}`);
    const secret = randomBytes(16).toString('hex');
    nodes = ports.map((port, i) => {
      const serverId = `tls-${i + 1}`;
      const dataDir = path.join(root, serverId);
      return new TestNode({
        index: i,
        serverId,
        host: '127.0.0.1',
        launch: specLaunch(),
        port,
        dataDir,
        logFile: path.join(root, `${serverId}.log`),
        env: {
          ...SPEC_NODE_ENV,
          // TLS handshakes on a loaded 2-core machine: more room than the specs' usual 1 s.
          READ_CHECK_TIMEOUT_MS: '5000',
          PREPARE_TIMEOUT_MS: '5000',
          PEER_TIMEOUT_MS: '5000',
          PORT: String(port),
          HOST: '127.0.0.1',
          SERVER_ID: serverId,
          DATA_DIR: dataDir,
          PEER_URLS: urls.filter((_, j) => j !== i).join(','),
          CLUSTER_SECRET: secret,
          TLS_CERT: files.cert,
          TLS_KEY: files.key,
          TLS_CA: files.ca,
        },
      });
    });
    git = await GitClient.create();
    git.env.GIT_SSL_CAINFO = files.ca;
    for (const node of nodes) node.spawn();
    await Promise.all(nodes.map((node, i) => waitHealthy(node, urls[i]!)));
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') {
      process.stderr.write(`\n${nodes.map((n) => `----- ${n.serverId} -----\n${n.logTail(30)}`).join('\n')}\n[spec harness] kept ${root}\n`);
      root = '';
    }
  });

  after(async function () {
    await Promise.all((nodes ?? []).map((n) => n.destroy()));
    await git?.dispose();
    if (root) await fs.rm(root, { recursive: true, force: true });
  });

  it('creates, clones and pushes over https, the push proxied to its coordinator and caught up by a node that was down, all over https', async function () {
    const repoId = 'tls/demo';
    const created = await httpsJson(`${urls[0]}/repos`, ca, { json: { repo_id: repoId } });
    expect(created.status, JSON.stringify(created.body)).to.equal(201);
    expect(created.body.clone_url).to.equal(`${urls[0]}/${repoId}.git`);
    const coordinator = pickCoordinator(repoId, urls)!;
    const pushTo = urls.find((u) => u !== coordinator)!;
    const down = nodes[urls.findIndex((u) => u !== coordinator && u !== pushTo)]!;

    const work = path.join(await git.tempDir('tls'), 'work');
    await git.ok(['clone', '--quiet', `${urls[2]}/${repoId}.git`, work]);
    const oid = await commitFile(git, work, 'README.md', '# over https\n');
    await down.kill();
    // Sent to a node that is not the coordinator: it proxies the push there over https.
    const report = expectPushed(await git.run(['push', `${pushTo}/${repoId}.git`, 'HEAD:refs/heads/main'], { cwd: work }));
    expect(report.confirmed).to.equal(2);
    // The node that was down catches up with git fetch from a peer, over https (TLS_CA as git's CA).
    down.spawn();
    for (const url of urls) {
      await eventually(async () => {
        const refs = await git.ok(['ls-remote', `${url}/${repoId}.git`, 'refs/heads/main']);
        expect(refs.split('\t')[0], url).to.equal(oid);
      }, 30_000, 200);
    }
    const logOf = (url: string): string => nodes[urls.indexOf(url)]!.logText();
    expect(logOf(pushTo)).to.include(`"to":"${coordinator}"`);
    await eventually(() => expect(down.logText()).to.match(/"message":"caught up"/), 30_000, 200);
  });

  it('serves no plain HTTP on its port; the hook listener is plain HTTP on loopback, for the hook only', async function () {
    const node = nodes[0]!;
    const plain = await http(`http://127.0.0.1:${node.port}/health`, { timeoutMs: 5000 }).then((r) => r.status, () => 'refused');
    expect(plain).to.be.oneOf(['refused', 400]);
    const hook = await fs.readFile(path.join(node.dataDir, 'hooks', 'pre-receive'), 'utf8');
    const hookPort = Number(/\/dev\/tcp\/127\.0\.0\.1\/(\d+)/.exec(hook)?.[1]);
    expect(hookPort).to.be.greaterThan(0).and.not.equal(node.port);
    for (const pathname of ['/health', '/repos', '/internal/catalog', '/tls/demo.git/info/refs?service=git-upload-pack']) {
      const res = await http(`http://127.0.0.1:${hookPort}${pathname}`, { headers: { [SECRET_HEADER]: node.env.CLUSTER_SECRET! } });
      expect(res.status, pathname).to.equal(404);
    }
  });
});
