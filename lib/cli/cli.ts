#!/usr/bin/env -S node --max-semi-space-size=1
import { runCli } from './program.js';

// The `quorum-git` executable: `quorum-git --help` lists the commands (lib/cli/). A command that
// serves (serve, cluster) keeps the process alive until it is signalled; any other ends it with the
// command's exit status.

const outcome = await runCli(process.argv);
if (outcome !== 'running') process.exit(outcome);
