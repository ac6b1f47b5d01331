import { Command, CommanderError } from 'commander';
import { registerAuthCommands } from './auth-commands.js';
import { registerClusterCommand } from './cluster-command.js';
import { EXIT, type Act, type Outcome } from './output.js';
import { registerRepoCommands } from './repo-commands.js';
import { registerServeCommand } from './serve-command.js';
import { registerToolCommands } from './tool-commands.js';

// The `quorum-git` command line (commander): one `register...` function per group of commands, each
// adding its commands to the program. Every command has --help; usage errors exit 2 with the
// command's help on stderr; each action returns its exit status (EXIT in ./output.ts) or 'running'.

/** Builds the program; the outcome of whichever action runs is handed to `settle`. */
export function buildProgram(settle: (outcome: Outcome) => void): Command {
  const act: Act =
    (fn) =>
    async (...args) => {
      settle(await fn(...args));
    };
  const program = new Command('quorum-git')
    .description('Replicated git hosting: run nodes and local clusters, manage repositories, check a cluster')
    // Set before any command is added: subcommands inherit them.
    .exitOverride()
    .showHelpAfterError(true)
    .addHelpText(
      'after',
      `
Run 'quorum-git <command> --help' for a command's options and exit statuses.
Exit status: 0 done; 1 failed or a finding; 2 usage error; repo commands also 3 (unavailable,
nothing changed) and 4 (outcome unknown). README "Command line" has the details.`,
    );

  registerServeCommand(program, act);
  registerClusterCommand(program, act);
  registerRepoCommands(program, act);
  registerToolCommands(program, act);
  registerAuthCommands(program, act);
  return program;
}

/** Parses `argv` (process.argv shape) and runs the command; resolves to its outcome. */
export async function runCli(argv: readonly string[]): Promise<Outcome> {
  let outcome: Outcome = EXIT.ok;
  const program = buildProgram((o) => (outcome = o));
  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    // --help and --version end the parse with exit code 0; everything else commander refuses
    // (unknown command or option, missing argument or value, an invalid value) is a usage error.
    return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  }
  return outcome;
}
