import type { Logger } from 'pino';

/**
 * Runs `stop` once on the first SIGTERM or SIGINT. `stop` is the component's ordered shutdown;
 * a failure is logged and sets a non-zero exit code. Before `isStarted()` there is nothing to
 * drain, so the process exits at once.
 */
export function stopOnSignals(logger: Logger, stop: () => Promise<void>, isStarted: () => boolean = () => true): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    if (!isStarted()) {
      logger.info({ signal }, 'stopped before start-up completed');
      process.exit(0);
    }
    logger.info({ signal }, 'shutting down');
    stop().then(
      () => logger.info('stopped'),
      (err: unknown) => {
        logger.error({ err: err instanceof Error ? err.name : String(err) }, 'shutdown failed');
        process.exitCode = 1;
      },
    );
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
}
