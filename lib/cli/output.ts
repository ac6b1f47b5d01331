import { InvalidArgumentError } from 'commander';
import { formatTable } from './verify.js';

// What every `quorum-git` command shares: the meaning of its exit status, how it reads --node and
// numbers, and how it prints (a table for people, --json for scripts, progress on a terminal only).

/**
 * Exit statuses (README "Command line"). `verify` and `status` use 0, 1 and 2 only: 1 is a finding, or
 * the node given did not answer (then nothing can be said about the cluster).
 */
export const EXIT = {
  ok: 0,
  /** A finding (verify, status), or the cluster answered no (repo: exists, not found, bad name). */
  failed: 1,
  /** Bad arguments: nothing was sent. */
  usage: 2,
  /** Nothing was changed and a later try may work: the node is unreachable, or has no quorum now. */
  unavailable: 3,
  /** A change was sent and its outcome is not known yet: `repo show` tells once recovery settled it. */
  inDoubt: 4,
} as const;

/**
 * What an action leaves behind: an exit status, or `running` for a command that keeps serving until
 * it is signalled (`serve`, `cluster`), whose process must not be ended when the action returns.
 */
export type Outcome = number | 'running';

/** Wraps an action so that its outcome is recorded for the process to exit with (lib/cli/program.ts). */
export type Act = <A extends unknown[]>(fn: (...args: A) => Promise<Outcome>) => (...args: A) => Promise<void>;

/** `--node`: a node's base URL, http only, no path (the same rules for every command). */
export function parseNodeUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`--node: '${value}' is not a URL (expected e.g. http://127.0.0.1:3001)`);
  }
  if (url.protocol !== 'http:') throw new InvalidArgumentError(`--node: '${value}' must be an http:// URL`);
  if (url.pathname !== '/' || url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
    throw new InvalidArgumentError(`--node: '${value}' must be a node's base URL, without a path`);
  }
  return url.origin;
}

/** A whole number in [min, max], for options such as --timeout-ms and --nodes. */
export function integerParser(name: string, min: number, max: number): (value: string) => number {
  return (value: string): number => {
    if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}, got '${value}'`);
    }
    return Number(value);
  };
}

export function toJson(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** What a progress line needs of a stream: process.stderr, or a fake in unit specs. */
export interface ProgressStream {
  isTTY?: boolean;
  write(text: string): unknown;
}

/**
 * One line of progress (`verify: 120/4000 repos`) redrawn in place, at most every `everyMs`. Only on
 * a terminal: piped or redirected, stderr stays free of carriage returns. `end` erases the line.
 */
export class Progress {
  private lastDrawMs = -Infinity;
  private drawn = false;

  constructor(
    private readonly stream: ProgressStream,
    private readonly label: string,
    private readonly nowMs: () => number = () => Date.now(),
    private readonly everyMs = 100,
  ) {}

  update(done: number, total: number, unit: string): void {
    if (this.stream.isTTY !== true) return;
    const now = this.nowMs();
    if (done < total && now - this.lastDrawMs < this.everyMs) return;
    this.lastDrawMs = now;
    this.drawn = true;
    this.stream.write(`\r${this.label}: ${done}/${total} ${unit}\u001b[K`);
  }

  end(): void {
    if (this.drawn) this.stream.write('\r\u001b[K');
    this.drawn = false;
  }
}
