// How a node's own Node.js process is started. Every git a node runs (an advertisement, receive-pack,
// upload-pack) is forked from the node process, and on the bench machine the fork of a node whose
// young generation had grown to V8's default (16 MiB semi-spaces, grown under a large push's
// streaming) took ~1 ms longer per git process than one kept at 1 MiB: 55 MB of anonymous memory
// against 30 MB. A push starts two such processes, a clone two. Scavenges become more frequent and
// stay cheap. The flag only takes effect on the command line (V8 sizes its heap at start), so every
// launcher here passes it, and the `quorum-git` executable's first line does too.
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1'];

/** The flags of NODE_FLAGS this process was not started with. */
export function missingNodeFlags(): string[] {
  return NODE_FLAGS.filter((flag) => !process.execArgv.includes(flag) && !(process.env.NODE_OPTIONS ?? '').split(/\s+/).includes(flag));
}
