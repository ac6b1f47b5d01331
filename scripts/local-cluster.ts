import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS } from '../lib/runtime.js';

// `npm start`: a local cluster of CLUSTER_SIZE nodes (default 3) on 127.0.0.1, ports BASE_PORT.. (default
// 3001..), data in ./data/node-<i>. Each node is its own process running `quorum-git serve`, logging
// JSON lines prefixed with its name. Ctrl-C stops them all.

const size = Number(process.env.CLUSTER_SIZE ?? 3);
const basePort = Number(process.env.BASE_PORT ?? 3001);
const host = process.env.HOST ?? '127.0.0.1';
const root = path.resolve(process.env.DATA_ROOT ?? 'data');
const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'lib', 'cli.js');
const secret = process.env.CLUSTER_SECRET ?? randomBytes(16).toString('hex');

if (!Number.isInteger(size) || size < 1 || size > 9) {
  process.stderr.write('CLUSTER_SIZE must be 1..9\n');
  process.exit(2);
}

const urls = Array.from({ length: size }, (_, i) => `http://${host}:${basePort + i}`);
const children: ChildProcess[] = [];
let stopping = false;

urls.forEach((url, i) => {
  const name = `node-${i + 1}`;
  const child = spawn(process.execPath, [...NODE_FLAGS, cli, 'serve'], {
    env: {
      ...process.env,
      PORT: String(basePort + i),
      HOST: host,
      SERVER_ID: name,
      DATA_DIR: path.join(root, name),
      PEER_URLS: urls.filter((u) => u !== url).join(','),
      CLUSTER_SECRET: secret,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const prefix = (stream: NodeJS.ReadableStream, out: NodeJS.WritableStream): void => {
    let buffered = '';
    stream.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) out.write(`${name} | ${line}\n`);
    });
  };
  prefix(child.stdout!, process.stdout);
  prefix(child.stderr!, process.stderr);
  child.on('exit', (code, signal) => {
    if (!stopping) {
      process.stderr.write(`${name} exited (${signal ?? code}); stopping the cluster\n`);
      stop(1);
    }
  });
  children.push(child);
});

function stop(code: number): void {
  if (stopping) return;
  stopping = true;
  let left = children.length;
  for (const child of children) {
    if (child.exitCode !== null || child.signalCode !== null) left -= 1;
    else child.once('exit', () => (left -= 1) === 0 && process.exit(code));
    child.kill('SIGTERM');
  }
  if (left === 0) process.exit(code);
  setTimeout(() => process.exit(code), 5000).unref();
}

process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));

process.stdout.write(
  [
    '',
    `quorum-git: ${size}-node local cluster (write quorum ${Math.floor(size / 2) + 1}), data in ${root}`,
    ...urls.map((u, i) => `  node-${i + 1}  ${u}`),
    '',
    'Try:',
    ...(process.env.AUTH_FILE
      ? [
          `  (users from AUTH_FILE=${process.env.AUTH_FILE}; TOKEN from \`quorum-git token create alice --name laptop\`)`,
          `  curl -s -X POST ${urls[0]}/repos -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"repo_id":"alice/hello"}'`,
          `  git clone http://alice@${urls[size > 1 ? 1 : 0]!.slice('http://'.length)}/alice/hello.git      (password: the token)`,
        ]
      : [
          `  curl -s -X POST ${urls[0]}/repos -H 'content-type: application/json' -d '{"repo_id":"alice/hello"}'`,
          `  git clone ${urls[size > 1 ? 1 : 0]}/alice/hello.git`,
        ]),
    `  curl -s ${urls[0]}/health`,
    '',
    'Ctrl-C stops all nodes.',
    '',
  ].join('\n') + '\n',
);
