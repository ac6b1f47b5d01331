import { expect } from 'chai';
import { advertisementHasServiceLine, gitProtocolEnv, protocolVersion } from '../../lib/http/git-protocol.js';

// The client's Git-Protocol header on its way to git's GIT_PROTOCOL, and the version git reads from it.

describe('git-protocol', function () {
  it('passes on what git sends and ignores anything else', function () {
    for (const ok of ['version=2', 'version=1', 'version=2:object-format=sha256', 'version=0:version=2', 'a'.repeat(256)]) {
      expect(gitProtocolEnv(ok), ok).to.equal(ok);
    }
    const repeated = ['version=2', 'version=2'];
    for (const bad of [undefined, '', 'version=2 ', 'version=2;x', 'version=2\nX: y', 'version=2\u00e9', 'a'.repeat(257), 'version=2, version=2', repeated]) {
      expect(gitProtocolEnv(bad), JSON.stringify(bad)).to.equal(undefined);
    }
  });

  it('reads the version as git does: the greatest known version=N, else 0', function () {
    const table: [string | undefined, 0 | 1 | 2][] = [
      [undefined, 0],
      ['', 0],
      ['version=2', 2],
      ['version=1', 1],
      ['version=2:version=1', 2],
      ['version=1:version=2', 2],
      ['version=3', 0],
      ['version=3:version=1', 1],
      ['object-format=sha256:version=2', 2],
      ['xversion=2', 0],
      ['version=02', 0],
    ];
    for (const [value, version] of table) expect(protocolVersion(value), String(value)).to.equal(version);
  });

  it('writes the service line unless the client asked for v2 (git http-backend get_info_refs)', function () {
    expect(advertisementHasServiceLine(undefined)).to.equal(true);
    expect(advertisementHasServiceLine('version=1')).to.equal(true);
    expect(advertisementHasServiceLine('version=2')).to.equal(false);
  });
});
