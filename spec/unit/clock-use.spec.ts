import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import ts from 'typescript';

// Every timer and every reading of the time in the node goes through the Clock handed down from the
// server (lib/base/clock.ts): that is what lets unit specs and the seeded simulation drive time themselves.
// This reads the TypeScript sources of lib/ (not dist/) and names, file:line, each place that goes
// around it: a bare setTimeout/setInterval/setImmediate (or their clear*), Date.now, Date(),
// performance.now, `new Date()`, or an import of node:timers. `clock.setTimeout(...)` and the like are
// method calls on an injected clock and are fine. lib/cli/ is left out: the command line and the local
// cluster launcher run beside the nodes, not in them (their waits are on real processes).

/** The one file that may touch the real clock. */
const CLOCK_FILE = 'lib/base/clock.ts';

/**
 * `new Date(x)` of a time the code already holds only formats it (no clock is read). Each such use
 * is listed here by file and exact text; anything else with `new Date(` is a finding.
 */
const ALLOWED_NEW_DATE: readonly { file: string; text: string }[] = [
  { file: 'lib/cluster/membership.ts', text: 'new Date(clock.now())' },
  { file: 'lib/http/health.ts', text: 'new Date(clock.now())' },
  { file: 'lib/cluster/catch-up.ts', text: 'new Date(f.sinceMs)' },
];

const TIMER_FUNCTIONS = new Set(['setTimeout', 'setInterval', 'setImmediate', 'clearTimeout', 'clearInterval', 'clearImmediate']);
const GLOBAL_OBJECTS = new Set(['globalThis', 'global', 'window']);
const TIMER_MODULES = new Set(['timers', 'node:timers', 'timers/promises', 'node:timers/promises']);

/** The source tree's root, from this spec's compiled place (dist/spec/unit/). */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

interface Finding {
  file: string;
  line: number;
  what: string;
}

/**
 * `node` names a member as declared or accessed (`x.setTimeout`, `{ setTimeout() {} }`), or an
 * import's binding (the import itself is the finding): not a reference to the global.
 */
function isMemberName(node: ts.Identifier): boolean {
  const parent = node.parent;
  if (ts.isImportSpecifier(parent) || ts.isExportSpecifier(parent)) return true;
  if (ts.isPropertyAccessExpression(parent)) return parent.name === node;
  return (
    (ts.isMethodDeclaration(parent) ||
      ts.isMethodSignature(parent) ||
      ts.isPropertyDeclaration(parent) ||
      ts.isPropertySignature(parent) ||
      ts.isPropertyAssignment(parent)) &&
    parent.name === node
  );
}

/** Every use of the real clock in one file's source, outside the allowed list. */
export function clockUses(file: string, source: string, allowedNewDate: readonly string[] = []): Finding[] {
  const sf = ts.createSourceFile(file, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const found: Finding[] = [];
  const add = (node: ts.Node, what: string): void => {
    found.push({ file, line: sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1, what });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isIdentifier(node) && TIMER_FUNCTIONS.has(node.text) && !isMemberName(node)) add(node, node.text);
    if (ts.isPropertyAccessExpression(node) && ts.isIdentifier(node.expression)) {
      const [object, name] = [node.expression.text, node.name.text];
      if (GLOBAL_OBJECTS.has(object) && TIMER_FUNCTIONS.has(name)) add(node, `${object}.${name}`);
      if ((object === 'Date' || object === 'performance') && name === 'now') add(node, `${object}.now`);
    }
    if (ts.isCallExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'Date') add(node, 'Date()');
    if (ts.isNewExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'Date') {
      const text = node.getText(sf);
      if ((node.arguments ?? []).length === 0) add(node, 'new Date()');
      else if (!allowedNewDate.includes(text)) add(node, `${text} (not in ALLOWED_NEW_DATE)`);
    }
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier) && TIMER_MODULES.has(node.moduleSpecifier.text)) {
      add(node, `import from '${node.moduleSpecifier.text}'`);
    }
    if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments[0] && ts.isStringLiteral(node.arguments[0]) && TIMER_MODULES.has(node.arguments[0].text)) {
      add(node, `import('${node.arguments[0].text}')`);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return found;
}

/** lib/**\/*.ts but lib/cli/, as paths relative to ROOT. */
function libSources(dir = path.join(ROOT, 'lib')): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (full !== path.join(ROOT, 'lib', 'cli')) out.push(...libSources(full));
    }
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(path.relative(ROOT, full));
  }
  return out.sort();
}

describe('clock use in lib/', () => {
  const files = libSources();

  it('reads the TypeScript sources, lib/base/clock.ts among them', () => {
    expect(files).to.include(CLOCK_FILE);
    expect(files.length).to.be.greaterThan(10);
  });

  it('finds each way around the clock in a sample, and not method calls on an injected clock', () => {
    const sample = [
      "import { setTimeout as wait } from 'node:timers/promises';",
      'const a = setTimeout(() => undefined, 10);',
      'clearTimeout(a);',
      'setInterval(tick, 1000);',
      'setImmediate(next);',
      'const t0 = Date.now();',
      'const now = options.now ?? Date.now;',
      'const when = new Date();',
      'const stamp = new Date(t0).toISOString();',
      'globalThis.setTimeout(fn, 1);',
      '// a comment that says setTimeout( and Date.now is not code',
      "const words = 'setTimeout(fn) in a string';",
      'clock.setTimeout(fn, 10); this.clock.clearTimeout(h); const x = { setTimeout() {}, now: clock.now() };',
    ].join('\n');
    const found = clockUses('lib/sample.ts', sample, ['new Date(t0)']);
    expect(found.map((f) => `${f.line}: ${f.what}`)).to.deep.equal([
      "1: import from 'node:timers/promises'",
      '2: setTimeout',
      '3: clearTimeout',
      '4: setInterval',
      '5: setImmediate',
      '6: Date.now',
      '7: Date.now',
      '8: new Date()',
      '10: globalThis.setTimeout',
    ]);
    expect(clockUses('lib/sample.ts', 'const stamp = new Date(t0).toISOString();')).to.have.length(1);
  });

  it('has no timer or clock reading outside lib/base/clock.ts (file:line of each)', () => {
    const findings = files
      .filter((file) => file !== CLOCK_FILE)
      .flatMap((file) =>
        clockUses(
          file,
          readFileSync(path.join(ROOT, file), 'utf8'),
          ALLOWED_NEW_DATE.filter((a) => a.file === file).map((a) => a.text),
        ),
      );
    expect(findings.map((f) => `${f.file}:${f.line}: ${f.what}`).join('\n'), 'use the Clock handed down from the server (lib/base/clock.ts)').to.equal('');
  });

  it('lists in ALLOWED_NEW_DATE only uses that still exist', () => {
    const stale = ALLOWED_NEW_DATE.filter((a) => !readFileSync(path.join(ROOT, a.file), 'utf8').includes(a.text));
    expect(stale).to.deep.equal([]);
  });
});

describe('systemClock', () => {
  const CLOCK_URL = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'lib', 'base', 'clock.js')).href;
  /** A fresh node process whose only pending work is one sleep on the system clock; its stdout. */
  const onlySleep = (options: string): string =>
    spawnSync(process.execPath, ['--input-type=module', '-e', `const { sleep, systemClock } = await import(${JSON.stringify(CLOCK_URL)}); sleep(systemClock, 20, ${options}).then(() => console.log('woke'));`], {
      encoding: 'utf8',
      timeout: 30_000,
    }).stdout;

  it('does not hold a process open for a pending timer, unless asked to (keepAlive, for waits before the node listens)', () => {
    expect(onlySleep('{}')).to.equal('');
    expect(onlySleep('{ keepAlive: true }')).to.equal('woke\n');
  });
});
