import { execFile } from 'node:child_process';

// Runs the real git binary. Arguments are passed as an array (never through a shell) and every
// call has a timeout, so a wedged git cannot hold a request forever.

export const GIT_TIMEOUT_MS = 60_000;

export interface GitOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

export function runGit(args: string[], options: GitOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'git',
      args,
      {
        cwd: options.cwd,
        env: options.env ?? process.env,
        timeout: options.timeoutMs ?? GIT_TIMEOUT_MS,
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`git ${args[0]} failed: ${stderr.trim() || err.message}`, { cause: err }));
        else resolve(stdout);
      },
    );
  });
}
