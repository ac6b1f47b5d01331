import winston from 'winston';

// JSON lines to stdout. Every line carries server_id; request handlers use child loggers that add
// request_id, and transaction code adds txn_id. Secrets are never passed to the logger.

export type Logger = winston.Logger;

export function createLogger(serverId: string, level = process.env.LOG_LEVEL ?? 'info'): Logger {
  return winston.createLogger({
    level,
    defaultMeta: { server_id: serverId },
    format: winston.format.combine(winston.format.errors({ stack: true }), winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console()],
  });
}

/** A logger that drops everything, for unit specs. */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console({ silent: true })] });
}
