import { pino } from 'pino';
import { describeNatsUrl, loadSidecarConfig } from '../config/sidecar-config.js';
import { PurgeSidecar } from '../sidecar/purge-sidecar.js';
import { describePostgresUrl } from '../store/database.js';

export async function sidecarCommand(flags: { service?: string; dataMap?: string; healthListen?: string }): Promise<void> {
  const config = loadSidecarConfig(process.env, flags);
  const logger = pino({ level: config.logLevel, base: { service: 'lethe-sidecar', downstream: config.service } });
  const sidecar = new PurgeSidecar(config, logger);

  let started = false;
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    if (!started) {
      // Still waiting for the database or NATS: nothing received, nothing to drain.
      logger.info({ signal }, 'stopped before start-up completed');
      process.exit(0);
    }
    logger.info({ signal }, 'shutting down: draining');
    sidecar.stop().then(
      () => logger.info('stopped'),
      (err: unknown) => {
        logger.error({ err: err instanceof Error ? err.name : String(err) }, 'shutdown failed');
        process.exitCode = 1;
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);

  if (config.failpoints.size > 0) logger.warn({ failpoints: [...config.failpoints] }, 'failpoints are armed: for tests only');
  await sidecar.start();
  started = true;
  const health = sidecar.healthAddress;
  logger.info(
    {
      database: describePostgresUrl(config.databaseUrl),
      dataMap: config.dataMapPath,
      nats: describeNatsUrl(config.natsUrl),
      stream: config.stream.name,
      consumer: config.service,
      concurrency: config.concurrency,
      maxDeliveries: config.maxDeliveries,
      health: health === undefined ? undefined : `${health.host}:${health.port}`,
    },
    'lethe sidecar running',
  );
}
