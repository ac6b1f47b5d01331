// The names of the HTTP headers nodes exchange: with peers (the cluster secret, the sender), with the
// pre-receive hook, and the request id every hop carries. In one place below the rooms that use them.

/** The cluster secret, on every node-to-node request. */
export const SECRET_HEADER = 'x-quorum-secret';
/** A request's id: honoured from a client (lib/http/request-id.ts), carried on every peer call. */
export const REQUEST_ID_HEADER = 'x-request-id';
