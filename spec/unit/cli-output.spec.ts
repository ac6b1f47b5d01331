import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { EXIT, integerParser, parseNodeUrl, Progress } from '../../lib/cli/output.js';
import {
  apiRequest,
  describeFailure,
  exitForAnswer,
  failureJson,
  formatCreated,
  formatList,
  formatShown,
  type ApiAnswer,
  type RequestKind,
} from '../../lib/cli/repo-commands.js';
import { freePorts } from '../../lib/cli/local-cluster.js';

// The parts of the command line below the commands: what each answer of the management API means as
// an exit status, how answers are printed, the --node and number parsers, the progress line, and the
// request itself against a loopback server that answers, never answers, or is not there.

const answer = (status: number, code?: string): ApiAnswer => ({ kind: 'answer', status, body: code ? { error: { code, message: `${code} happened` } } : {} });

describe('quorum-git exit statuses of the repo commands', function () {
  const table: { title: string; kind: RequestKind; answer: ApiAnswer; exit: number }[] = [
    { title: 'a create answered 201', kind: 'write', answer: answer(201), exit: EXIT.ok },
    { title: 'a create answered 202 (final, applied by recovery on the rest)', kind: 'write', answer: answer(202), exit: EXIT.ok },
    { title: 'a delete answered 204', kind: 'write', answer: answer(204), exit: EXIT.ok },
    { title: 'a create of an existing repo', kind: 'write', answer: answer(409, 'repo_exists'), exit: EXIT.failed },
    { title: 'a show of a missing repo', kind: 'read', answer: answer(404, 'repo_not_found'), exit: EXIT.failed },
    { title: 'an invalid name refused by the node', kind: 'write', answer: answer(400, 'invalid_repo_id'), exit: EXIT.failed },
    { title: 'a repo another request is changing', kind: 'write', answer: answer(409, 'repo_busy'), exit: EXIT.unavailable },
    { title: 'a write without a quorum (nothing changed)', kind: 'write', answer: answer(503, 'quorum_unreachable'), exit: EXIT.unavailable },
    { title: 'a read without a read quorum', kind: 'read', answer: answer(503, 'read_quorum_unreachable'), exit: EXIT.unavailable },
    { title: 'a write decided but not confirmed (txn_in_doubt)', kind: 'write', answer: answer(503, 'txn_in_doubt'), exit: EXIT.inDoubt },
    { title: "a write's internal error", kind: 'write', answer: answer(500, 'internal'), exit: EXIT.inDoubt },
    { title: "a read's internal error", kind: 'read', answer: answer(500, 'internal'), exit: EXIT.failed },
    { title: 'a node that refused the connection', kind: 'write', answer: { kind: 'no-answer', sent: false, message: 'refused' }, exit: EXIT.unavailable },
    { title: 'a write sent without an answer (timeout)', kind: 'write', answer: { kind: 'no-answer', sent: true, message: 'timeout' }, exit: EXIT.inDoubt },
    { title: 'a read sent without an answer', kind: 'read', answer: { kind: 'no-answer', sent: true, message: 'timeout' }, exit: EXIT.unavailable },
  ];
  for (const row of table) {
    it(`exits ${row.exit} on ${row.title}`, function () {
      expect(exitForAnswer(row.kind, row.answer)).to.equal(row.exit);
    });
  }

  it('says why a request failed, with the code and status, and prints the error body for --json', function () {
    const refused = answer(409, 'repo_exists');
    expect(describeFailure(refused)).to.equal('repo_exists happened (repo_exists, HTTP 409)');
    expect(failureJson(refused)).to.deep.equal({ error: { code: 'repo_exists', message: 'repo_exists happened' } });
    const unreachable: ApiAnswer = { kind: 'no-answer', sent: false, message: 'cannot reach http://127.0.0.1:1: connect ECONNREFUSED' };
    expect(describeFailure(unreachable)).to.equal('cannot reach http://127.0.0.1:1: connect ECONNREFUSED');
    expect(failureJson(unreachable)).to.deep.equal({ error: { code: 'unreachable', message: 'cannot reach http://127.0.0.1:1: connect ECONNREFUSED' } });
    expect(failureJson({ kind: 'no-answer', sent: true, message: 'no answer in 5 ms' })).to.deep.equal({ error: { code: 'no_answer', message: 'no answer in 5 ms' } });
    expect(failureJson({ kind: 'answer', status: 502, body: '<html>' })).to.deep.equal({ error: { code: 'unexpected_answer', message: 'HTTP 502' } });
  });
});

describe('quorum-git repo output', function () {
  it('prints a create with its nodes, quorum, epoch and clone command; a 202 says the rest apply it by recovery', function () {
    const body = { repo_id: 'a/b', nodes_confirmed: ['x', 'y', 'z'], quorum: 2, epoch: 3, clone_url: 'http://n1/a/b.git' };
    expect(formatCreated(201, body)).to.equal('created a/b: applied on 3 node(s) (quorum 2), epoch 3\nclone: git clone http://n1/a/b.git');
    expect(formatCreated(202, { ...body, nodes_confirmed: ['x'] })).to.match(/^created a\/b: final, but applied on 1 node\(s\) so far, fewer than the quorum of 2: the others apply it by recovery/);
  });

  it('lists repos as a table with a count, and says so when there are none', function () {
    expect(formatList({ repos: ['a/b', 'c/d'], count: 2 })).to.equal('REPO\na/b\nc/d\n2 repositories');
    expect(formatList({ repos: ['a/b'], count: 1 })).to.equal('REPO\na/b\n1 repository');
    expect(formatList({ repos: [], count: 0 })).to.equal('no repositories');
  });

  it('shows a repo as one row: id, version (epoch.generation) and the clone URL on the node asked', function () {
    expect(formatShown('http://n2', { repo_id: 'a/b', epoch: 1, generation: 12 }).split('\n')).to.deep.equal([
      'REPO  VERSION  CLONE_URL',
      'a/b   1.12     http://n2/a/b.git',
    ]);
  });
});

describe('quorum-git option parsers', function () {
  it("takes a node's base URL and refuses anything else, saying why", function () {
    expect(parseNodeUrl('http://127.0.0.1:3001')).to.equal('http://127.0.0.1:3001');
    expect(parseNodeUrl('http://127.0.0.1:3001/')).to.equal('http://127.0.0.1:3001');
    expect(() => parseNodeUrl('not a url')).to.throw(/is not a URL/);
    expect(() => parseNodeUrl('https://127.0.0.1:3001')).to.throw(/must be an http:\/\/ URL/);
    expect(() => parseNodeUrl('http://127.0.0.1:3001/repos')).to.throw(/without a path/);
    expect(() => parseNodeUrl('http://user:pw@127.0.0.1:3001')).to.throw(/without a path/);
  });

  it('takes whole numbers in range only', function () {
    const parse = integerParser('--nodes', 1, 9);
    expect(parse('3')).to.equal(3);
    for (const bad of ['0', '10', '-1', '2.5', 'three', '']) expect(() => parse(bad), bad).to.throw(/--nodes must be a whole number from 1 to 9/);
  });
});

describe('quorum-git progress line', function () {
  function fakeStream(isTTY: boolean): { isTTY: boolean; written: string[]; write: (s: string) => boolean } {
    const written: string[] = [];
    return { isTTY, written, write: (s: string) => written.push(s) > 0 };
  }

  it('draws nothing when stderr is not a terminal', function () {
    const stream = fakeStream(false);
    const progress = new Progress(stream, 'verify', () => 0);
    progress.update(0, 2, 'repos');
    progress.update(2, 2, 'repos');
    progress.end();
    expect(stream.written).to.deep.equal([]);
  });

  it('redraws in place at most every interval, always draws the last step, and erases itself at the end', function () {
    const stream = fakeStream(true);
    let now = 1000;
    const progress = new Progress(stream, 'verify', () => now, 100);
    progress.update(0, 3, 'repos');
    now = 1050;
    progress.update(1, 3, 'repos'); // within the interval: skipped
    now = 1100;
    progress.update(2, 3, 'repos');
    now = 1101;
    progress.update(3, 3, 'repos'); // the last step: drawn anyway
    progress.end();
    expect(stream.written).to.deep.equal([
      '\rverify: 0/3 repos\u001b[K',
      '\rverify: 2/3 repos\u001b[K',
      '\rverify: 3/3 repos\u001b[K',
      '\r\u001b[K',
    ]);
  });
});

describe('quorum-git management request', function () {
  let server: http.Server;
  let url = '';
  const seen: { method?: string; url?: string; contentType?: string; body: string }[] = [];

  before(async function () {
    server = http.createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8').on('data', (c: string) => (body += c));
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, contentType: req.headers['content-type'], body });
        if (req.url === '/silent') return; // never answers
        res.writeHead(req.url === '/repos' ? 201 : 404, { 'content-type': 'application/json' });
        res.end(req.url === '/repos' ? JSON.stringify({ repo_id: 'a/b', created: true }) : JSON.stringify({ error: { code: 'repo_not_found', message: 'no' } }));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async function () {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('sends JSON and returns the status and the parsed answer, errors included', async function () {
    expect(await apiRequest(url, 'POST', '/repos', { repo_id: 'a/b' }, 5000)).to.deep.equal({ kind: 'answer', status: 201, body: { repo_id: 'a/b', created: true } });
    expect(seen.at(-1)).to.deep.equal({ method: 'POST', url: '/repos', contentType: 'application/json', body: '{"repo_id":"a/b"}' });
    expect(await apiRequest(url, 'GET', '/repos/a/x', undefined, 5000)).to.deep.equal({ kind: 'answer', status: 404, body: { error: { code: 'repo_not_found', message: 'no' } } });
  });

  it('reports a request that got no answer in time as sent (it may have acted)', async function () {
    const answer = await apiRequest(url, 'DELETE', '/silent', undefined, 50);
    expect(answer).to.deep.equal({ kind: 'no-answer', sent: true, message: `${url} did not answer within 50 ms` });
    expect(exitForAnswer('write', answer)).to.equal(EXIT.inDoubt);
  });

  it('reports a refused connection as not sent (nothing changed)', async function () {
    const [closed] = await freePorts(1);
    const answer = await apiRequest(`http://127.0.0.1:${closed}`, 'POST', '/repos', { repo_id: 'a/b' }, 5000);
    expect(answer).to.include({ kind: 'no-answer', sent: false });
    expect(exitForAnswer('write', answer)).to.equal(EXIT.unavailable);
  });
});
