import { pino } from 'pino';
import { loadServerConfig } from '../config/config.js';
import { startLetheServer } from '../server/lethe-server.js';

export async function serveCommand(flags: { demo?: boolean; listen?: string; dataDir?: string }): Promise<void> {
  const config = loadServerConfig(process.env, flags);
  const logger = pino({ level: config.logLevel, base: { service: 'lethe' } });
  const server = await startLetheServer(config, logger);

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    server.stop().then(
      () => logger.info('stopped'),
      (err: unknown) => {
        logger.error({ err: err instanceof Error ? err.name : String(err) }, 'shutdown failed');
        process.exitCode = 1;
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
