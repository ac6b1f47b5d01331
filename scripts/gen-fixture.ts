import { spawn } from 'node:child_process';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

// `npm run fixture [-- DIR]`: a deterministic bare git repository for the clone benchmark, by default
// .bench/fixture.git: FIXTURE_COMMITS (default 10,000) commits on main, FIXTURE_BRANCHES (300) branches
// and FIXTURE_TAGS (200) annotated tags spread over its history (a real project's shape: a push --mirror
// carries a few hundred refs), and at least 15 MB packed. One `git fast-import` process is fed from a stream; content comes
// from a seeded PRNG and every date and name is fixed, so object ids are the same on every run and
// every machine. Finishes with one pack (`git repack -adf`). A marker file inside the repo records the
// parameters and the head; a fixture whose marker matches is reused as it is.

export const DEFAULT_FIXTURE = '.bench/fixture.git';
const MARKER = 'quorum-git-fixture.json';
const FORMAT = 2;

export interface FixtureParams {
  format: number;
  seed: number;
  commits: number;
  dirs: number;
  filesPerDir: number;
  /** New random lines written per commit on average (each 64 base64 characters). */
  linesPerCommit: number;
  /** A file longer than this drops lines from its start. */
  maxLinesPerFile: number;
  /** Branches besides main (`release-<k>`), each at a commit of main's history, evenly spread. */
  branches: number;
  /** Annotated tags (`v<k>.0`), each at a commit of main's history, evenly spread. */
  tags: number;
}

export interface FixtureInfo {
  dir: string;
  params: FixtureParams;
  head: string;
  commits: number;
  refs: number;
  sizePackKiB: number;
  reused: boolean;
}

export function defaultParams(): FixtureParams {
  const int = (name: string, fallback: number): number => {
    const raw = process.env[name];
    if (raw === undefined || raw === '') return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < 1) throw new Error(`${name} must be a positive integer, got '${raw}'`);
    return Number(raw);
  };
  return {
    format: FORMAT,
    seed: int('FIXTURE_SEED', 20240611),
    commits: int('FIXTURE_COMMITS', 10_000),
    dirs: 16,
    filesPerDir: 16,
    linesPerCommit: int('FIXTURE_LINES_PER_COMMIT', 24),
    maxLinesPerFile: 120,
    branches: int('FIXTURE_BRANCHES', 300),
    tags: int('FIXTURE_TAGS', 200),
  };
}

// ---------------------------------------------------------------------------------------------
// Seeded PRNG: sfc32 seeded through splitmix32. Never Math.random.

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    const init = splitmix32(seed);
    this.a = init();
    this.b = init();
    this.c = init();
    this.d = init();
    for (let i = 0; i < 16; i += 1) this.next();
  }

  /** Uniform 32-bit unsigned integer. */
  next(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + (this.next() % (hi - lo + 1));
  }

  bytes(n: number): Buffer {
    const buf = Buffer.allocUnsafe(Math.ceil(n / 4) * 4);
    for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE(this.next(), i);
    return buf.subarray(0, n);
  }

  /** A line of 64 base64 characters (48 random bytes): ~6 bits of entropy per character. */
  line(): string {
    return this.bytes(48).toString('base64');
  }
}

// ---------------------------------------------------------------------------------------------
// The fast-import stream

const AUTHOR = 'Fixture Author <author@fixture.invalid>';
const COMMITTER = 'Fixture Committer <committer@fixture.invalid>';
const EPOCH = 1_700_000_000;

function data(text: string | Buffer): Buffer[] {
  const body = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
  return [Buffer.from(`data ${body.length}\n`), body, Buffer.from('\n')];
}

/** Yields the whole fast-import stream, in chunks of a few KiB, deterministically from `params`. */
function* fastImportStream(params: FixtureParams): Generator<Buffer> {
  const rng = new Prng(params.seed);
  const paths: string[] = [];
  for (let d = 0; d < params.dirs; d += 1) {
    for (let f = 0; f < params.filesPerDir; f += 1) {
      paths.push(`src/mod${d.toString().padStart(2, '0')}/file${f.toString().padStart(3, '0')}.txt`);
    }
  }
  const files = paths.map(() => [] as string[]);
  const branchEvery = Math.max(1, Math.floor(params.commits / params.branches));
  const tagEvery = Math.max(1, Math.floor(params.commits / params.tags));

  yield Buffer.from('feature done\n');
  for (let i = 1; i <= params.commits; i += 1) {
    const changed: number[] = [];
    if (i === 1) {
      // Initial commit: every file with a few lines, plus a README.
      paths.forEach((_, f) => {
        for (let k = 0; k < 8; k += 1) files[f]!.push(rng.line());
        changed.push(f);
      });
    } else {
      // 1-3 files per commit; the new lines sum to ~linesPerCommit on average. Each file edit either
      // appends, rewrites a block in place, or inserts in the middle, so deltas between versions of
      // a file are real but most of each commit's bytes are new.
      const count = rng.int(1, 3);
      const budget = Math.max(count, Math.round((params.linesPerCommit * 2 * rng.int(50, 150)) / 200));
      for (let c = 0; c < count; c += 1) {
        const f = rng.int(0, paths.length - 1);
        if (changed.includes(f)) continue;
        changed.push(f);
        const lines = files[f]!;
        const n = Math.max(1, Math.round(budget / count));
        const op = rng.int(0, 2);
        const fresh = Array.from({ length: n }, () => rng.line());
        if (op === 0 || lines.length === 0) lines.push(...fresh);
        else if (op === 1) lines.splice(rng.int(0, lines.length - 1), Math.min(n, lines.length), ...fresh);
        else lines.splice(rng.int(0, lines.length), 0, ...fresh);
        if (lines.length > params.maxLinesPerFile) lines.splice(0, lines.length - params.maxLinesPerFile);
      }
    }
    const when = EPOCH + i * 97;
    const message =
      i === 1
        ? 'Initial import of the benchmark fixture\n'
        : `Change ${i}: update ${changed.map((f) => paths[f]).join(', ')}\n\nRef: ${rng.bytes(10).toString('hex')}\n`;
    const chunks: Buffer[] = [
      Buffer.from(`commit refs/heads/main\nmark :${i}\nauthor ${AUTHOR} ${when} +0000\ncommitter ${COMMITTER} ${when} +0000\n`),
      ...data(message),
    ];
    if (i === 1) chunks.push(Buffer.from('M 100644 inline README.md\n'), ...data('# fixture\n\nGenerated by scripts/gen-fixture.ts.\n'));
    for (const f of changed) {
      chunks.push(Buffer.from(`M 100644 inline ${paths[f]}\n`), ...data(files[f]!.join('\n') + '\n'));
    }
    chunks.push(Buffer.from('\n'));
    if (i % branchEvery === 0 && i / branchEvery <= params.branches) chunks.push(Buffer.from(`reset refs/heads/release-${i / branchEvery}\nfrom :${i}\n\n`));
    if (i % tagEvery === 0 && i / tagEvery <= params.tags) {
      const k = i / tagEvery;
      chunks.push(Buffer.from(`tag v${k}.0\nfrom :${i}\ntagger ${COMMITTER} ${when} +0000\n`), ...data(`Release ${k}.0\n`));
    }
    yield Buffer.concat(chunks);
  }
  yield Buffer.from('done\n');
}

// ---------------------------------------------------------------------------------------------

function git(args: string[], cwd: string, input?: Iterable<Buffer>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('git', args, {
      cwd,
      env: { PATH: process.env.PATH, HOME: cwd, GIT_CONFIG_NOSYSTEM: '1', LANG: 'C', LC_ALL: 'C' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.once('error', reject);
    child.once('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else reject(new Error(`git ${args.join(' ')} exited ${code}: ${Buffer.concat(err).toString('utf8').trim().slice(-2000)}`));
    });
    const stdin = child.stdin;
    stdin.on('error', () => undefined); // the close handler reports the failure
    if (!input) {
      stdin.end();
      return;
    }
    const iterator = input[Symbol.iterator]();
    const pump = (): void => {
      for (;;) {
        const next = iterator.next();
        if (next.done) {
          stdin.end();
          return;
        }
        if (!stdin.write(next.value)) {
          stdin.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}

function readMarker(dir: string): (FixtureParams & { head: string }) | undefined {
  try {
    return JSON.parse(readFileSync(path.join(dir, MARKER), 'utf8')) as FixtureParams & { head: string };
  } catch {
    return undefined;
  }
}

async function describe(dir: string, params: FixtureParams, reused: boolean): Promise<FixtureInfo> {
  const head = (await git(['rev-parse', 'refs/heads/main'], dir)).trim();
  const commits = Number((await git(['rev-list', '--count', '--all'], dir)).trim());
  const refs = (await git(['for-each-ref', '--format=%(refname)'], dir)).split('\n').filter(Boolean).length;
  const counts = await git(['count-objects', '-v'], dir);
  const sizePackKiB = Number(/^size-pack: (\d+)$/m.exec(counts)?.[1] ?? NaN);
  return { dir, params, head, commits, refs, sizePackKiB, reused };
}

/** Makes the fixture at `dir` unless a complete one with the same parameters is there already. */
export async function ensureFixture(dir: string = DEFAULT_FIXTURE, params: FixtureParams = defaultParams(), log = (s: string) => process.stderr.write(s)): Promise<FixtureInfo> {
  const target = path.resolve(dir);
  const marker = readMarker(target);
  if (marker && JSON.stringify({ ...marker, head: undefined }) === JSON.stringify({ ...params, head: undefined })) {
    try {
      const info = await describe(target, params, true);
      if (info.head === marker.head) return info;
    } catch {
      // broken: regenerate below
    }
  }
  if (existsSync(target)) {
    if (!marker) throw new Error(`${target} exists but is not a complete fixture (no ${MARKER}); remove it first`);
    log(`fixture: ${target} was made with other parameters or is broken; regenerating\n`);
    await fs.rm(target, { recursive: true, force: true });
  }
  const tmp = `${target}.tmp-${process.pid}`;
  await fs.rm(tmp, { recursive: true, force: true });
  await fs.mkdir(path.dirname(target), { recursive: true });
  const started = Date.now();
  await git(['init', '--quiet', '--bare', '--initial-branch=main', '--template=', tmp], path.dirname(target));
  try {
    log(`fixture: fast-import of ${params.commits} commits into ${tmp}\n`);
    await git(['fast-import', '--quiet', '--done', '--depth=50'], tmp, fastImportStream(params));
    log(`fixture: imported in ${((Date.now() - started) / 1000).toFixed(1)} s; repacking\n`);
    await git(['repack', '-a', '-d', '-f', '-q', '--window=10', '--depth=50'], tmp);
    await git(['prune-packed'], tmp);
    const info = await describe(tmp, params, false);
    await fs.writeFile(path.join(tmp, MARKER), JSON.stringify({ ...params, head: info.head }, null, 2) + '\n');
    await fs.rename(tmp, target);
    log(`fixture: done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
    return { ...info, dir: target };
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

export function formatKiB(kib: number): string {
  return kib >= 1024 ? `${(kib / 1024).toFixed(2)} MiB` : `${kib} KiB`;
}

async function main(): Promise<void> {
  const dir = process.argv[2] ?? process.env.FIXTURE ?? DEFAULT_FIXTURE;
  const info = await ensureFixture(dir);
  const sizeMB = (info.sizePackKiB * 1024) / 1e6;
  process.stdout.write(
    [
      `fixture:   ${info.dir}${info.reused ? ' (reused)' : ''}`,
      `commits:   ${info.commits}`,
      `refs:      ${info.refs}`,
      `head:      ${info.head}`,
      `size-pack: ${formatKiB(info.sizePackKiB)} (${sizeMB.toFixed(1)} MB)`,
    ].join('\n') + '\n',
  );
  if (info.commits < 10_000 && info.params.commits >= 10_000) throw new Error(`expected >= 10000 commits, got ${info.commits}`);
  if (sizeMB < 15 && info.params.commits >= 10_000) process.stderr.write('fixture: warning: the pack is smaller than 15 MB\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`gen-fixture failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
