import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// The `quorum-git` executable as the specs run it: the built dist/lib/cli/cli.js, to its end.

export const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'lib', 'cli', 'cli.js');
const CLI_TIMEOUT_MS = 30_000;

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to its end (killed after CLI_TIMEOUT_MS); QUORUM_GIT_NODE is never inherited. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const inherited = { ...process.env };
    delete inherited.QUORUM_GIT_NODE;
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), CLI_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
