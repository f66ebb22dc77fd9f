import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import type { Runnable } from './lifecycle.js';

/**
 * Runs `task` every `intervalMs` until stopped (a sweeper, a heartbeat): one run at a time, a
 * failure is logged and retried on the next tick. The timer never keeps the process alive.
 */
export class PeriodicTask implements Runnable {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    readonly name: string,
    private readonly task: () => Promise<void>,
    private readonly intervalMs: number,
    private readonly logger: Logger,
    /** The first run starts at once rather than after one interval. */
    private readonly opts: { readonly runAtStart?: boolean } = {},
  ) {}

  start(): void {
    this.stopped = false;
    if (this.opts.runAtStart === true) this.tick(0);
    else this.schedule();
  }

  /** Stops the timer and waits for a run in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One run, now. */
  async runOnce(): Promise<void> {
    try {
      await this.task();
    } catch (err) {
      this.logger.warn({ err: errorSummary(err), task: this.name }, `${this.name} failed; retrying on the next tick`);
    }
  }

  private schedule(): void {
    this.tick(this.intervalMs);
  }

  private tick(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.runOnce().finally(() => {
        this.running = undefined;
        this.schedule();
      });
    }, delayMs);
    this.timer.unref();
  }
}
