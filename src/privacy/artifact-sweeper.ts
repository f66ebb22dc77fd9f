import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';

/**
 * Expires export artifacts on a timer: their encrypted chunks are deleted, their descriptions
 * stay in the ledger marked expired. Every replica may run one; they skip each other's rows.
 */
export class ArtifactSweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly expire: () => Promise<number>,
    private readonly intervalMs: number,
    private readonly logger: Logger,
  ) {}

  start(): void {
    this.stopped = false;
    this.schedule();
  }

  /** Stops the timer and waits for a sweep in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One sweep; a failure is logged and retried on the next tick. */
  async sweep(): Promise<void> {
    try {
      const expired = await this.expire();
      if (expired > 0) this.logger.info({ expired }, 'export artifacts expired');
    } catch (err) {
      this.logger.warn({ err: errorSummary(err) }, 'could not expire export artifacts; retrying on the next sweep');
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.sweep().finally(() => {
        this.running = undefined;
        this.schedule();
      });
    }, this.intervalMs);
    this.timer.unref();
  }
}
