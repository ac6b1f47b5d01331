import { sleep, systemClock, type Clock } from './clock.js';

// Named failpoints: places in the two-phase commit where a test can make a real node crash, fail or
// stall, to prove that what a crash there leaves behind is recovered. Off by default and free when off:
// the table below is empty unless the node was started with FAILPOINTS set, and the hot path is one
// Map lookup with no promise created.
//
//   FAILPOINTS=name=action[,name=action...]
//   name    <op>.<role>.<point>, e.g. push.participant.after-prepare (FAILPOINT_NAMES lists them all)
//   action  crash      the process SIGKILLs itself at once: no exit handlers, no flush, its gits orphaned,
//                      exactly what a kill -9 of the node alone leaves behind
//           error      the step throws an Error with code 'failpoint' (as if its I/O had failed)
//           delay(ms)  the step waits ms milliseconds, then goes on
//
// Use at a point (the caller knows the name statically):
//   if (failpointAction('push.coordinator.after-votes')) await hit('push.coordinator.after-votes');
// or, when one more lookup does not matter, just `await hit(name)`.
//
// A bad FAILPOINTS stops the node at start with a message saying what to change, like lib/base/config.ts.

export const FAILPOINT_OPS = ['create', 'delete', 'push'] as const;
export const FAILPOINT_ROLES = ['coordinator', 'participant'] as const;

/** The points of each role, in the order a transaction passes them. */
export const FAILPOINT_POINTS = {
  coordinator: [
    /** The coordinator has its own prepare done (or not started) and has sent nothing to peers. */
    'before-prepare',
    /** Every vote is in; the decision is not yet logged. A crash here must end in abort everywhere. */
    'after-votes',
    /** The decision is logged (fsynced); no commit has been sent. Recovery must finish the commit. */
    'after-decision',
    /** One participant was sent its commit; the others not yet. */
    'after-first-commit',
  ],
  participant: [
    /** `prepared` is logged and fsynced; the vote is not sent. */
    'after-prepare',
    /** The commit was received; nothing applied yet. */
    'before-apply',
    /** The change is applied; the ack is not sent. */
    'after-apply',
  ],
} as const;

export type FailpointOp = (typeof FAILPOINT_OPS)[number];
export type FailpointRole = (typeof FAILPOINT_ROLES)[number];
export type FailpointName = {
  [R in FailpointRole]: `${FailpointOp}.${R}.${(typeof FAILPOINT_POINTS)[R][number]}`;
}[FailpointRole];

/** Every valid failpoint name, shared by the driver, the specs and the README. */
export const FAILPOINT_NAMES: readonly FailpointName[] = FAILPOINT_OPS.flatMap((op) =>
  FAILPOINT_ROLES.flatMap((role) => FAILPOINT_POINTS[role].map((point) => `${op}.${role}.${point}` as FailpointName)),
);

const VALID_NAMES: ReadonlySet<string> = new Set(FAILPOINT_NAMES);

export type FailpointAction = { kind: 'crash' } | { kind: 'error' } | { kind: 'delay'; delayMs: number };

/** Thrown by an `error` failpoint; `code` lets a spec (and a log reader) tell it from a real failure. */
export class FailpointError extends Error {
  readonly code = 'failpoint' as const;
  readonly failpoint: FailpointName;

  constructor(name: FailpointName) {
    super(`failpoint ${name} fired`);
    this.name = 'FailpointError';
    this.failpoint = name;
  }
}

/** A delay longer than this is a typo, not a test: it would hold a repo's lock for hours. */
export const MAX_FAILPOINT_DELAY_MS = 600_000;

function parseAction(name: string, raw: string): FailpointAction {
  if (raw === 'crash') return { kind: 'crash' };
  if (raw === 'error') return { kind: 'error' };
  const delay = /^delay\((\d+)\)$/.exec(raw);
  if (delay) {
    const delayMs = Number(delay[1]);
    if (delayMs > MAX_FAILPOINT_DELAY_MS) throw new Error(`FAILPOINTS: ${name}: delay(${delayMs}) exceeds ${MAX_FAILPOINT_DELAY_MS} ms`);
    return { kind: 'delay', delayMs };
  }
  throw new Error(`FAILPOINTS: ${name}: unknown action '${raw}' (expected crash, error or delay(ms))`);
}

/**
 * Parses `name=action[,name=action...]` (whitespace around items ignored; empty or undefined means none).
 * Throws an Error naming the bad item and what would be valid.
 */
export function parseFailpoints(spec: string | undefined): Map<FailpointName, FailpointAction> {
  const out = new Map<FailpointName, FailpointAction>();
  if (spec === undefined) return out;
  for (const item of spec.split(',').map((s) => s.trim())) {
    if (item === '') continue;
    const eq = item.indexOf('=');
    if (eq <= 0) throw new Error(`FAILPOINTS: '${item}' is not name=action (e.g. push.participant.after-prepare=crash)`);
    const name = item.slice(0, eq).trim();
    const rawAction = item.slice(eq + 1).trim();
    if (!VALID_NAMES.has(name)) {
      throw new Error(
        `FAILPOINTS: unknown failpoint '${name}' (names are <${FAILPOINT_OPS.join('|')}>.<role>.<point>; ` +
          `coordinator points: ${FAILPOINT_POINTS.coordinator.join(', ')}; participant points: ${FAILPOINT_POINTS.participant.join(', ')})`,
      );
    }
    if (out.has(name as FailpointName)) throw new Error(`FAILPOINTS: ${name} is set twice`);
    out.set(name as FailpointName, parseAction(name, rawAction));
  }
  return out;
}

/** The active failpoints of this process: empty unless FAILPOINTS was set (or a spec configured some). */
let active: Map<FailpointName, FailpointAction> = new Map();

/** Replaces the active failpoints (for specs; the node itself reads FAILPOINTS once at import). Throws on a bad spec, leaving the old set. */
export function configureFailpoints(spec: string | undefined): void {
  active = parseFailpoints(spec);
}

/** What the failpoint `name` does, or undefined when it is off (the common case: one Map lookup). */
/** True when any failpoint is set: the driver's hot path asks this before building a name. */
export function failpointsSet(): boolean {
  return active.size > 0;
}

export function failpointAction(name: FailpointName): FailpointAction | undefined {
  return active.get(name);
}

/** Crash, throw or wait (on `clock`) as the failpoint `name` says; resolves at once when it is off. */
export async function hit(name: FailpointName, clock: Clock = systemClock): Promise<void> {
  const action = active.get(name);
  if (action === undefined) return;
  switch (action.kind) {
    case 'crash':
      // Nothing after this line runs: SIGKILL cannot be caught, so no exit handler flushes or cleans.
      process.stderr.write(`failpoint ${name}: crash\n`);
      process.kill(process.pid, 'SIGKILL');
      // If the signal has not landed yet, do not let the caller go on with its next step.
      await new Promise<never>(() => undefined);
      return;
    case 'error':
      throw new FailpointError(name);
    case 'delay':
      // Held open: a delay can fire while the node replays its log at start, before it listens.
      await sleep(clock, action.delayMs, { keepAlive: true });
      return;
  }
}

// The node's own failpoints, read once when the module loads. A bad value stops the process now,
// before it serves anything, with a message like a bad PORT gives (see lib/cli/cli.ts).
if (process.env.FAILPOINTS !== undefined && process.env.FAILPOINTS !== '') {
  try {
    configureFailpoints(process.env.FAILPOINTS);
  } catch (err) {
    process.stderr.write(`quorum-git: ${(err as Error).message}\n`);
    process.exit(2);
  }
}
