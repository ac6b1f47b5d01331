#!/usr/bin/env -S node --max-semi-space-size=1
import { loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { NODE_FLAGS, missingNodeFlags } from './runtime.js';
import { QuorumGitNode } from './server.js';

// `quorum-git serve`: one node, configured from the environment (see README "Configuration").

const USAGE = 'usage: quorum-git serve   (configured by PORT, HOST, SERVER_ID, DATA_DIR, PEER_URLS, QUORUM, CLUSTER_SECRET)';

async function serve(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    process.stderr.write(`quorum-git: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const logger = createLogger(config.serverId);
  if (!process.env.CLUSTER_SECRET) logger.warn('CLUSTER_SECRET is not set: using the development default; set one in production');
  const missing = missingNodeFlags();
  if (missing.length > 0) logger.info(`started without ${missing.join(' ')}: every git process starts slower; run \`node ${NODE_FLAGS.join(' ')} dist/lib/cli.js serve\``);
  const node = new QuorumGitNode(config, logger);
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info('stopping', { signal });
    node.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error('stop failed', { err });
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  try {
    await node.start();
  } catch (err) {
    logger.error('cannot start', { err });
    process.exit(1);
  }
}

const command = process.argv[2];
if (command === 'serve') {
  void serve();
} else {
  process.stderr.write(`${USAGE}\n`);
  process.exit(command === undefined || command === '--help' || command === '-h' ? 0 : 2);
}
