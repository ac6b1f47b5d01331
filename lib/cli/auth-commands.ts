import type { Command } from 'commander';
import type { Act } from './output.js';

// `quorum-git user ...` and `quorum-git token ...`: the users file (AUTH_FILE) and its tokens. Their
// subcommands parse their own arguments and print their own usage (lib/cli/auth-cli.ts), so commander
// hands them everything after the group's name, --help included. Exit: 0 done, 1 refused (no such
// user, the file is locked...), 2 a usage error.

export function registerAuthCommands(program: Command, act: Act): void {
  for (const [group, summary] of [
    ['user', 'manage the users of the users file (AUTH_FILE): add, passwd, remove, list'],
    ['token', "manage users' personal access tokens: create, list, revoke"],
  ] as const) {
    program
      .command(group)
      .description(`${summary}; \`quorum-git ${group} --help\` for the subcommands`)
      .helpOption(false)
      .allowUnknownOption()
      .allowExcessArguments()
      .argument('[args...]')
      .action(
        act(async (args: string[]) => {
          const { userCommand, tokenCommand } = await import('./auth-cli.js');
          return (group === 'user' ? userCommand : tokenCommand)(args);
        }),
      );
  }
}
