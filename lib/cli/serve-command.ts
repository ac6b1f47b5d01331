import type { Command } from 'commander';
import { loadConfig } from '../base/config.js';
import { NODE_FLAGS, missingNodeFlags } from '../base/runtime.js';
import { EXIT, type Act, type Outcome } from './output.js';

// `quorum-git serve`: one node, configured from the environment (README "Configuration"). It serves
// until SIGINT or SIGTERM, then stops cleanly: exit 0; 1 when it cannot start or stop; 2 when the
// configuration is refused (the message says what to change).

const SERVE_HELP = `
Configured by environment variables (README "Configuration"), among them:
  PORT, HOST            where it listens (default 3001, 127.0.0.1)
  SERVER_ID, DATA_DIR   its name and where it keeps repositories and its transaction log
  PEER_URLS             the other nodes, comma-separated http://host:port
  QUORUM                write quorum, default floor(N/2)+1
  CLUSTER_SECRET        shared by all nodes; guards /internal
  LOG_LEVEL             winston level of its JSON log lines on stdout (default info)
Exit status: 0 stopped by SIGINT/SIGTERM; 1 could not start or stop; 2 bad configuration.`;

async function serve(): Promise<Outcome> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    process.stderr.write(`quorum-git: ${(err as Error).message}\n`);
    return EXIT.usage;
  }
  // Loaded here, not above: winston and the server are most of the start time of the other commands.
  const [{ createLogger }, { QuorumGitNode }] = await Promise.all([import('../base/logger.js'), import('../node.js')]);
  const logger = createLogger(config.serverId);
  if (!process.env.CLUSTER_SECRET) logger.warn('CLUSTER_SECRET is not set: using the development default; set one in production');
  const missing = missingNodeFlags();
  if (missing.length > 0) logger.info(`started without ${missing.join(' ')}: every git process starts slower; run \`node ${NODE_FLAGS.join(' ')} dist/lib/cli/cli.js serve\``);
  const node = new QuorumGitNode(config, logger);
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info('stopping', { signal });
    node.stop().then(
      () => process.exit(EXIT.ok),
      (err) => {
        logger.error('stop failed', { err });
        process.exit(EXIT.failed);
      },
    );
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  try {
    await node.start();
  } catch (err) {
    logger.error('cannot start', { err });
    return EXIT.failed;
  }
  return 'running';
}

export function registerServeCommand(program: Command, act: Act): void {
  program
    .command('serve')
    .description('run one node, configured by environment variables')
    .addHelpText('after', SERVE_HELP)
    .action(act(serve));
}
