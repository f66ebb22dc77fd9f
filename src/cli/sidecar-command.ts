import { pino } from 'pino';
import { loadSidecarConfig } from '../config/sidecar-config.js';
import { describeNatsUrl } from '../events/nats.js';
import { PurgeSidecar } from '../sidecar/purge-sidecar.js';
import { describePostgresUrl } from '../store/database.js';
import { stopOnSignals } from './shutdown.js';

export async function sidecarCommand(flags: { service?: string; dataMap?: string; healthListen?: string }): Promise<void> {
  const config = loadSidecarConfig(process.env, flags);
  const logger = pino({ level: config.logLevel, base: { service: 'lethe-sidecar', downstream: config.service } });
  const sidecar = new PurgeSidecar(config, logger);

  let started = false;
  stopOnSignals(
    logger,
    () => sidecar.stop(),
    () => started,
  );

  for (const deprecation of config.deprecations) logger.warn({ setting: deprecation.split('=')[0] }, deprecation);
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
