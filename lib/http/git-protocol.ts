// The client's `Git-Protocol` HTTP header, handed to git as GIT_PROTOCOL. Pure: a header value in,
// what to give git out; no I/O.
//
// gitprotocol-http(5): "Clients MAY send Extra Parameters (see gitprotocol-pack(5)) as a
// colon-separated string in the Git-Protocol HTTP header." git http-backend passes the header on
// unchanged (http-backend.c: setenv(GIT_PROTOCOL_ENVIRONMENT, getenv("HTTP_GIT_PROTOCOL"))), for the
// ref advertisement and the RPC alike; upload-pack and receive-pack read the version from it.
// Without it every client falls back to protocol v0: the whole ref advertisement on every fetch.
//
// We pass it only when it looks like what git sends (`version=2`, `version=2:object-format=sha256`):
// bounded, and of a charset that cannot carry anything but key=value pairs. Anything else is ignored
// (the request is served as v0), exactly as git ignores keys it does not know.

/** What a Git-Protocol value may be; git itself sends `version=N` and colon-separated `key=value`. */
export const GIT_PROTOCOL_VALUE = /^[a-z0-9=:.,_-]{1,256}$/i;

/** The value to give git as GIT_PROTOCOL, or undefined when the header is absent or not plausible. */
export function gitProtocolEnv(header: string | string[] | undefined): string | undefined {
  // Node joins repeated unknown headers with ", ": a space, so a repeated header is refused below.
  if (typeof header !== 'string' || !GIT_PROTOCOL_VALUE.test(header)) return undefined;
  return header;
}

export type ProtocolVersion = 0 | 1 | 2;

/**
 * The protocol version git will speak for a GIT_PROTOCOL value: the greatest `version=N` among its
 * colon-separated keys that git knows (0, 1, 2), else 0. The same rule as git's
 * determine_protocol_version_server() (protocol.c), so we agree with git on the version.
 */
export function protocolVersion(gitProtocol: string | undefined): ProtocolVersion {
  let version: ProtocolVersion = 0;
  for (const item of (gitProtocol ?? '').split(':')) {
    const value = item.startsWith('version=') ? item.slice('version='.length) : undefined;
    const v = value === '0' ? 0 : value === '1' ? 1 : value === '2' ? 2 : undefined;
    if (v !== undefined && v > version) version = v;
  }
  return version;
}

/**
 * Whether the ref advertisement (GET info/refs) starts with the `# service=git-<service>` pkt-line
 * and a flush. git http-backend (get_info_refs) writes it unless the version is 2, for either
 * service; a v2 response is upload-pack's capability advertisement alone ("version 2" first).
 */
export function advertisementHasServiceLine(gitProtocol: string | undefined): boolean {
  return protocolVersion(gitProtocol) !== 2;
}
