import { pino } from 'pino';
import { loadOperatorConfig } from '../config/operator-config.js';
import { startOperator } from '../operator/operator.js';
import { stopOnSignals } from './shutdown.js';

export async function operatorCommand(): Promise<void> {
  const config = loadOperatorConfig(process.env);
  const logger = pino({ level: config.logLevel, base: { service: 'lethe-operator' } });
  if (config.failpoints.size > 0) logger.warn({ failpoints: [...config.failpoints] }, 'failpoints are armed: for tests only');
  // Assigned once the operator started; the signal handler may run before that.
  // eslint-disable-next-line prefer-const
  let operator: Awaited<ReturnType<typeof startOperator>> | undefined;
  stopOnSignals(
    logger,
    () => operator?.stop() ?? Promise.resolve(),
    () => operator !== undefined,
  );
  operator = await startOperator(config, logger);
}
