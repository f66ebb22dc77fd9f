import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';

/**
 * What starts and stops: servers, relays, consumers, periodic tasks. `stop()` may be called
 * more than once, and waits for the work in hand.
 */
export interface Runnable {
  start(): void | Promise<void>;
  stop(): Promise<void>;
}

interface Part {
  readonly name: string;
  readonly stop: () => void | Promise<void>;
}

/**
 * The parts of a process, started in order and stopped in reverse (a stack of deferred stops,
 * like Go's `defer` or controller-runtime's manager): a start-up that fails half-way stops what
 * it had started, and `stop()` runs every part's stop once, even when one of them fails.
 */
export class Lifecycle {
  private readonly parts: Part[] = [];
  private stopping: Promise<void> | undefined;

  constructor(private readonly logger: Logger) {}

  /** Starts a part and registers its stop. */
  async start<R extends Runnable>(name: string, part: R): Promise<R> {
    await part.start();
    this.defer(name, () => part.stop());
    return part;
  }

  /** Opens a resource (a pool, a listener) and registers how to close it. */
  async open<T>(name: string, open: () => Promise<T>, close: (resource: T) => void | Promise<void>): Promise<T> {
    const resource = await open();
    this.defer(name, () => close(resource));
    return resource;
  }

  /** Registers a stop for something already started. */
  defer(name: string, stop: () => void | Promise<void>): void {
    this.parts.push({ name, stop });
  }

  /**
   * Runs `build` (which starts the parts through this lifecycle); if it throws, stops what it
   * had started, then rethrows its error.
   */
  async build<T>(build: (life: this) => Promise<T>): Promise<T> {
    try {
      return await build(this);
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw err;
    }
  }

  /** Stops every part in reverse order; rejects with the first failure once all have run. */
  stop(): Promise<void> {
    this.stopping ??= this.stopAll();
    return this.stopping;
  }

  private async stopAll(): Promise<void> {
    let first: unknown;
    for (const part of [...this.parts].reverse()) {
      try {
        await part.stop();
      } catch (err) {
        this.logger.warn({ part: part.name, err: errorSummary(err) }, 'stopping failed');
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  }
}
