import { randomUUID } from 'node:crypto';

// Request ids: one id follows a client's request through every node it touches. The id a client
// sends in `x-request-id` is kept when it is safe to put in a log line, a response header, a peer
// call's header and a git child's environment; anything else is replaced by a new one. Peer calls
// carry it (lib/cluster/peer-client.ts), and so does a push: receive-pack is started with it in
// REQUEST_ID_ENV (lib/git/hooks.ts), the pre-receive hook sends it back with the push (lib/git/hooks.ts), and the push's
// transaction sends it on every prepare and commit (TxnDriver.runTxn's requestId).

export const REQUEST_ID_MAX_CHARS = 128;

/**
 * Letters, digits and `. _ : - + = / @`: enough for UUIDs, base64 and most tracing ids, and nothing
 * that could end a header line, a JSON string or a shell word (no space, comma, quote or control).
 * Two x-request-id headers arrive joined by ", " and so are refused as one.
 */
const SAFE_REQUEST_ID = new RegExp(`^[A-Za-z0-9._:+=/@-]{1,${REQUEST_ID_MAX_CHARS}}$`);

export function isSafeRequestId(value: unknown): value is string {
  return typeof value === 'string' && SAFE_REQUEST_ID.test(value);
}

/** The client's id if it is safe, else a new one. */
export function requestIdFrom(header: string | string[] | undefined, newId: () => string = randomUUID): string {
  return isSafeRequestId(header) ? header : newId();
}
