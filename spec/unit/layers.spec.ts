import { expect } from 'chai';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// The dependency rule of lib/'s layout (README, Layout): each folder is a room with one job, and a
// file imports only from its own room or from rooms below it, in this order. core/ (the pure
// protocol) imports only core/: no I/O, no clock, no logger. node.ts wires every room; the CLI sits on
// top and may start a node.

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const LIB = path.join(ROOT, 'lib');
export const LAYERS = ['core', 'base', 'git', 'storage', 'cluster', 'http', 'node', 'cli'] as const;
type Layer = (typeof LAYERS)[number];

function layerOf(file: string): Layer | undefined {
  const rel = path.relative(LIB, file);
  if (!rel.includes(path.sep)) return rel === 'node.ts' ? 'node' : undefined;
  const room = rel.split(path.sep)[0] as Layer;
  return LAYERS.includes(room) ? room : undefined;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Every relative import of a file, resolved to the source file it names. */
function importsOf(file: string, text: string): string[] {
  return [...text.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+?)\.js['"]/g)].map((m) => path.resolve(path.dirname(file), `${m[1]}.ts`));
}

export function layerProblems(files: readonly string[], read: (file: string) => string = (f) => readFileSync(f, 'utf8')): string[] {
  const problems: string[] = [];
  for (const file of files) {
    const from = layerOf(file);
    const name = path.relative(ROOT, file);
    if (from === undefined) {
      problems.push(`${name} is in no room (${LAYERS.join(', ')})`);
      continue;
    }
    for (const target of importsOf(file, read(file))) {
      const to = layerOf(target);
      const allowed = to !== undefined && (to === from || (from !== 'core' && LAYERS.indexOf(to) < LAYERS.indexOf(from)));
      if (!allowed) problems.push(`${name} (${from}) imports ${path.relative(ROOT, target)} (${to ?? 'no room'})`);
    }
  }
  return problems;
}

describe('lib/ layout', () => {
  const files = sources(LIB);

  it('puts every source file in a room, and every import goes to its own room or one below', () => {
    expect(files.length).to.be.greaterThan(30);
    expect(layerProblems(files)).to.deep.equal([]);
  });

  it('names an import that reaches up a room, one out of core, and a file in no room', () => {
    const fake: Record<string, string> = {
      [path.join(LIB, 'git', 'x.ts')]: "import { SECRET_HEADER } from '../cluster/peer-client.js';",
      [path.join(LIB, 'core', 'y.ts')]: "import type { Logger } from '../base/logger.js';",
      [path.join(LIB, 'z.ts')]: '',
      [path.join(LIB, 'cluster', 'ok.ts')]: "import { runGit } from '../git/git.js';\nimport { compareVersions } from '../core/txn-core.js';",
    };
    expect(layerProblems(Object.keys(fake), (f) => fake[f] ?? '')).to.deep.equal([
      'lib/git/x.ts (git) imports lib/cluster/peer-client.ts (cluster)',
      'lib/core/y.ts (core) imports lib/base/logger.ts (base)',
      'lib/z.ts is in no room (core, base, git, storage, cluster, http, node, cli)',
    ]);
  });
});
