import { expect } from 'chai';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DEV_CLUSTER_SECRET, isLoopbackHost, loadConfig, secureDefaultProblems } from '../../lib/base/config.js';

// Secure by default (issue 8): a node reachable beyond loopback refuses to start without a real
// cluster secret, and one listening beyond loopback refuses to start without users (AUTH_FILE).
// The TLS settings are read at start, so a bad one stops the node there too.

const SECRET_32 = 's'.repeat(32);

function problemOf(env: NodeJS.ProcessEnv): string | undefined {
  try {
    loadConfig(env);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

describe('secure defaults at start', () => {
  describe('which hosts are loopback', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', 'LOCALHOST', '::1', '[::1]', '::ffff:127.0.0.1']) {
      it(`takes ${host} as loopback`, () => expect(isLoopbackHost(host)).to.equal(true));
    }
    for (const host of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com', '127.0.0.1.example.com', 'localhost.example.com', '']) {
      it(`takes ${JSON.stringify(host)} as reachable from elsewhere`, () => expect(isLoopbackHost(host)).to.equal(false));
    }
  });

  it('starts on loopback with no secret and no AUTH_FILE (the development default)', () => {
    const config = loadConfig({ PEER_URLS: 'http://127.0.0.1:3002' });
    expect(config.clusterSecret).to.equal(DEV_CLUSTER_SECRET);
    expect(config.authFile).to.equal(undefined);
  });

  const exposed: [string, NodeJS.ProcessEnv][] = [
    ['HOST=0.0.0.0', { HOST: '0.0.0.0', AUTH_FILE: '/etc/quorum-git/users.json' }],
    ['a peer on another machine', { PEER_URLS: 'http://10.0.0.2:3001' }],
    ['a PUBLIC_URL on another machine', { PUBLIC_URL: 'http://git.example.com:3001' }],
  ];
  for (const [where, env] of exposed) {
    describe(`with ${where}`, () => {
      it('refuses to start without CLUSTER_SECRET, naming what to set', () => {
        expect(problemOf(env)).to.match(/CLUSTER_SECRET is not set/).and.match(/at least 32 bytes/);
      });
      it("refuses the README's published development secret", () => {
        expect(problemOf({ ...env, CLUSTER_SECRET: DEV_CLUSTER_SECRET })).to.match(/development default/);
      });
      it('refuses a secret shorter than 32 bytes', () => {
        expect(problemOf({ ...env, CLUSTER_SECRET: 's'.repeat(31) })).to.match(/CLUSTER_SECRET is 31 bytes/);
      });
      it('starts with a secret of 32 bytes or more', () => {
        expect(problemOf({ ...env, CLUSTER_SECRET: SECRET_32 })).to.equal(undefined);
      });
    });
  }

  it('counts a secret in bytes, not characters', () => {
    const env = { PEER_URLS: 'http://10.0.0.2:3001' };
    expect(problemOf({ ...env, CLUSTER_SECRET: '€'.repeat(11) })).to.equal(undefined);
    expect(problemOf({ ...env, CLUSTER_SECRET: '€'.repeat(10) })).to.match(/30 bytes/);
  });

  it('refuses to listen beyond loopback without AUTH_FILE, even with a good secret (protected mode)', () => {
    for (const host of ['0.0.0.0', '::', '10.0.0.1']) {
      expect(problemOf({ HOST: host, CLUSTER_SECRET: SECRET_32 }), host).to.match(/AUTH_FILE is not set/).and.match(/HOST=127\.0\.0\.1/);
      expect(problemOf({ HOST: host, CLUSTER_SECRET: SECRET_32, AUTH_FILE: 'users.json' }), host).to.equal(undefined);
    }
  });

  it('lists every problem at once', () => {
    expect(secureDefaultProblems({ host: '0.0.0.0', selfUrl: 'http://10.0.0.1:3001', peerUrls: ['http://10.0.0.2:3001'], clusterSecret: undefined, authFile: undefined })).to.have.length(2);
    expect(secureDefaultProblems({ host: '127.0.0.1', selfUrl: 'http://127.0.0.1:3001', peerUrls: ['http://127.0.0.1:3002'], clusterSecret: undefined, authFile: undefined })).to.deep.equal([]);
  });
});

describe('TLS settings', () => {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qg-config-'));
    await fs.writeFile(path.join(dir, 'cert.pem'), 'CERT');
    await fs.writeFile(path.join(dir, 'key.pem'), 'KEY');
    await fs.writeFile(path.join(dir, 'ca.pem'), 'CA');
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  it('serves HTTPS with TLS_CERT and TLS_KEY, and defaults PUBLIC_URL to https://', () => {
    const config = loadConfig({ TLS_CERT: path.join(dir, 'cert.pem'), TLS_KEY: path.join(dir, 'key.pem'), TLS_CA: path.join(dir, 'ca.pem'), PEER_URLS: 'https://127.0.0.1:3002' });
    expect(config.tls).to.deep.equal({ cert: Buffer.from('CERT'), key: Buffer.from('KEY') });
    expect(config.tlsCa).to.deep.equal(Buffer.from('CA'));
    expect(config.selfUrl).to.equal('https://127.0.0.1:3001');
    expect(config.peerUrls).to.deep.equal(['https://127.0.0.1:3002']);
  });

  it('refuses TLS_CERT without TLS_KEY, an unreadable file, and an http:// PUBLIC_URL for an HTTPS node', () => {
    expect(problemOf({ TLS_CERT: path.join(dir, 'cert.pem') })).to.match(/TLS_CERT and TLS_KEY must be set together/);
    expect(problemOf({ TLS_CERT: path.join(dir, 'nope.pem'), TLS_KEY: path.join(dir, 'key.pem') })).to.match(/TLS_CERT: cannot read .*ENOENT/);
    expect(problemOf({ TLS_CA: path.join(dir, 'nope.pem') })).to.match(/TLS_CA: cannot read/);
    expect(problemOf({ TLS_CERT: path.join(dir, 'cert.pem'), TLS_KEY: path.join(dir, 'key.pem'), PUBLIC_URL: 'http://127.0.0.1:3001' })).to.match(/PUBLIC_URL must be an https/);
  });

  it('still refuses other schemes for peers', () => {
    expect(problemOf({ PEER_URLS: 'ftp://127.0.0.1:3002' })).to.match(/must be an http:\/\/ or https:\/\/ URL/);
  });
});

describe('switches', () => {
  it('streams packs ahead by default; STREAM_PACKS_AHEAD takes 1, true, 0 or false and refuses anything else, naming it', () => {
    expect(loadConfig({}).streamPacksAhead).to.equal(true);
    for (const [raw, on] of [['1', true], ['true', true], ['0', false], ['false', false], ['', true]] as const) {
      expect(loadConfig({ STREAM_PACKS_AHEAD: raw }).streamPacksAhead, raw).to.equal(on);
    }
    for (const raw of ['yes', 'off', '2', 'TRUE']) expect(problemOf({ STREAM_PACKS_AHEAD: raw }), raw).to.match(/STREAM_PACKS_AHEAD must be 1, true, 0 or false/);
  });
});
