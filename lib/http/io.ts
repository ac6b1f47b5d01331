import type http from 'node:http';
import { QuorumGitError } from '../core/errors.js';

// Reading request bodies (bounded, JSON only where JSON is meant) and writing JSON answers: shared by
// the app, the management API, the internal API and the git gateway.

export function send(res: http.ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function readJson(req: http.IncomingMessage, limit: number): Promise<unknown> {
  // Only application/json: a cross-site HTML form can send text/plain (or urlencoded) without a
  // preflight, so accepting those would let any web page create repos through a browser.
  const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    req.resume();
    throw new QuorumGitError('unsupported_media_type', `the body must be application/json, got ${type === '' ? 'no content-type' : type}`);
  }
  return parseJson(await readBody(req, limit));
}

export function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new QuorumGitError('invalid_json', 'the body is not valid JSON');
  }
}

export function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) {
    req.resume();
    return Promise.reject(new QuorumGitError('body_too_large', `the body exceeds ${limit} bytes`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit && !failed) {
        failed = true;
        reject(new QuorumGitError('body_too_large', `the body exceeds ${limit} bytes`));
      }
      if (!failed) chunks.push(chunk);
    });
    req.on('end', () => {
      if (!failed) resolve(Buffer.concat(chunks));
    });
    req.on('error', (err) => reject(new QuorumGitError('invalid_body', 'the request body could not be read', { cause: err })));
  });
}
