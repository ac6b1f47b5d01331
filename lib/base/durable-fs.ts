import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Clock } from './clock.js';

// What makes a file-system change survive power loss, not only a process crash. A write is in the
// page cache until its file is fsynced; a create, rename or unlink is in the page cache until its
// *directory* is fsynced. Without the second, a file whose data was fsynced can still vanish, or a
// rename can be undone, when the machine loses power.
//
// The two syncs are injected (with these real defaults) so that specs can record which files and
// directories were made durable and in what order relative to the renames: a power cut cannot be
// simulated on a live file system, but the order of syncs and renames decides what one would leave.

export interface DiskSync {
  /** fsync of an open file: its data and size are durable once this resolves. */
  syncFile(handle: fs.FileHandle, file: string): Promise<void>;
  /** fsync of a directory: the names created, renamed or removed in it are durable once this resolves. */
  syncDir(dir: string): Promise<void>;
}

/** fsyncs a directory, so that the names just created or renamed in it survive a power loss. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export const realDiskSync: DiskSync = {
  syncFile: (handle) => handle.sync(),
  syncDir,
};

/** fsync of a file by path: opens it read-only (an fsync through any descriptor flushes the file). */
export async function syncFileAt(disk: DiskSync, file: string): Promise<void> {
  const handle = await fs.open(file, 'r');
  try {
    await disk.syncFile(handle, file);
  } finally {
    await handle.close();
  }
}

/**
 * Replaces `file` with `content` so that a crash at any point leaves either the old content or the
 * new, whole: the content goes to `<file>.tmp`, is fsynced, is renamed over `file`, and then the
 * directory is fsynced. A crash before the rename leaves a stray `.tmp` that the next call overwrites.
 */
export async function replaceFileDurably(disk: DiskSync, file: string, content: string | Buffer): Promise<void> {
  const tmp = `${file}.tmp`;
  const handle = await fs.open(tmp, 'w');
  try {
    await handle.writeFile(content);
    await disk.syncFile(handle, tmp);
  } finally {
    await handle.close();
  }
  await fs.rename(tmp, file);
  await disk.syncDir(path.dirname(file));
}

/**
 * syncfs(2) of the file system that holds `file`, by coreutils' `sync -f`: once it resolves, every
 * write and every name on that file system is durable, the disk's cache flushed once for all of
 * them. For many small files (a push's hundreds of ref lock files) that is a fraction of an fsync
 * each: git's 501 lock fsyncs took 350-395 ms where writing them unsynced and one syncfs took
 * 115-130 ms. A process, not a call: Node has no syncfs, and fsyncs issued from the node run on
 * its 4-thread pool, which every file read of the node waits on (tried, and reverted in f4a6a45).
 * Rejects when sync fails (a writeback error: Linux reports those to syncfs since 5.8) or takes
 * longer than `timeoutMs`.
 */
export function syncFileSystem(file: string, timeoutMs: number, clock: Clock): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sync', ['-f', '--', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      if (stderr.length < 1000) stderr += chunk.toString('utf8');
    });
    const timer = clock.setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`sync -f did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('error', (err) => {
      clock.clearTimeout(timer);
      reject(new Error(`sync -f could not run: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      clock.clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`sync -f failed (${signal ?? code}): ${stderr.trim()}`));
    });
  });
}
