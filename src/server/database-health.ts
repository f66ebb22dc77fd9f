import type { Runnable } from '../runtime/lifecycle.js';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';

/**
 * Probes the database every `intervalMs` (`ping` with its own short timeout) and reports each
 * change: not serving from the first probe that fails, serving again from the first that
 * answers. Probes never overlap; a failed one is logged by error class only.
 */
export class DatabaseHealth implements Runnable {
  private timer: NodeJS.Timeout | undefined;
  private serving = true;
  private running: Promise<void> | undefined;

  constructor(
    private readonly ping: (timeoutMs: number) => Promise<void>,
    private readonly opts: { readonly intervalMs: number; readonly timeoutMs: number; readonly logger: Logger; readonly onChange: (serving: boolean) => void },
  ) {}

  isServing(): boolean {
    return this.serving;
  }

  start(): void {
    this.schedule();
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  private schedule(): void {
    this.timer = setTimeout(() => {
      this.running = this.probe().finally(() => {
        this.running = undefined;
        if (this.timer !== undefined) this.schedule();
      });
    }, this.opts.intervalMs);
    this.timer.unref();
  }

  private async probe(): Promise<void> {
    const { timeoutMs, logger } = this.opts;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error('the database did not answer the health probe in time'), { name: 'ProbeTimeout' })), timeoutMs);
    });
    let serving: boolean;
    try {
      await Promise.race([this.ping(timeoutMs), timedOut]);
      serving = true;
    } catch (err) {
      serving = false;
      if (this.serving) logger.warn({ err: errorSummary(err), timeoutMs }, 'the database does not answer: health NOT_SERVING');
    } finally {
      clearTimeout(timer);
    }
    if (serving === this.serving) return;
    this.serving = serving;
    if (serving) logger.info('the database answers again: health SERVING');
    this.opts.onChange(serving);
  }
}
