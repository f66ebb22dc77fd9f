import type { ConsumerMessages, JetStreamClient, JsMsg } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import { errorSummary, ConfigError } from '../errors.js';
import { sleep } from '../runtime/backoff.js';
import type { Runnable } from '../runtime/lifecycle.js';
import { Slots } from '../runtime/slots.js';
import { retryDelayMs } from './delivery-policy.js';

export interface DurableWorkerOptions {
  readonly js: JetStreamClient;
  readonly stream: string;
  /** The durable consumer's name. */
  readonly consumer: string;
  /**
   * Creates the consumer, or brings an existing one in line: called at start and before each
   * re-creation (after the consumer was deleted, or consuming failed).
   */
  readonly ensureConsumer: () => Promise<unknown>;
  /** Messages handled at once; as many are pulled ahead of them. */
  readonly concurrency: number;
  /** Handles one message and settles it (ack, `nak(delay)` or term: see `settle`). */
  readonly handle: (msg: JsMsg, log: Logger) => Promise<void>;
  /** Start without the consumer when it cannot be set up yet, and keep trying (a part of a process that must not stop the rest). */
  readonly setUpInBackground?: boolean;
  /** What the consumer receives, for logs ("anonymization events"). */
  readonly what: string;
  readonly logger: Logger;
  /** Pauses between restarts of a consumer that stopped (doubling, capped). */
  readonly restartBaseMs?: number;
  readonly restartCapMs?: number;
}

/**
 * A pull consumer of a durable JetStream consumer, shared by the server's receipt consumer and
 * the sidecar: at most `concurrency` messages in hand, a consumer that is deleted or stops is
 * created again with backoff, and `stop()` drains (no new pulls; the messages received are
 * finished and settled).
 */
export class DurableWorker implements Runnable {
  private running = false;
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private readonly slots: Slots;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopSignal = new AbortController();

  constructor(private readonly o: DurableWorkerOptions) {
    this.slots = new Slots(o.concurrency);
  }

  /** Pulling messages now (readiness). */
  get consuming(): boolean {
    return this.running && this.messages !== undefined;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /**
   * Creates (or checks) the consumer, then consumes in the background; rejects when the consumer
   * cannot be set up, unless `setUpInBackground` (then it keeps trying, with backoff).
   */
  async start(): Promise<void> {
    if (this.loop !== undefined) return;
    if (this.o.setUpInBackground !== true) await this.o.ensureConsumer();
    this.running = true;
    this.loop = this.consumeLoop(this.o.setUpInBackground === true);
  }

  async stop(): Promise<void> {
    this.running = false;
    this.stopSignal.abort();
    // Stop pulling. The messages already received still come out of the iterator and are handled.
    void this.messages?.close().catch(() => undefined);
    await this.loop;
    await Promise.allSettled([...this.inFlight]);
  }

  private async consumeLoop(setUpFirst: boolean): Promise<void> {
    const { js, stream, consumer: name, logger } = this.o;
    let restarts = 0;
    let setUp = !setUpFirst;
    while (this.running) {
      try {
        if (restarts > 0 || !setUp) await this.o.ensureConsumer();
        setUp = true;
        const consumer = await js.consumers.get(stream, name);
        const messages = await consumer.consume({ max_messages: this.o.concurrency });
        this.messages = messages;
        if (!this.running) void messages.close();
        else logger.info({ consumer: name, stream }, `consuming ${this.o.what}`);
        this.watchConsumer(messages);
        for await (const msg of messages) {
          restarts = 0;
          await this.slots.acquire();
          this.track(this.o.handle(msg, logger).finally(() => this.slots.release()));
        }
      } catch (err) {
        // A ConfigError's message is ours and holds no data (a consumer of that name that is something else).
        if (this.running)
          logger.error({ consumer: name, err: errorSummary(err), ...(err instanceof ConfigError ? { reason: err.message } : {}) }, 'consuming stopped');
      } finally {
        this.messages = undefined;
      }
      if (!this.running) break;
      restarts++;
      const delay = retryDelayMs(restarts, this.o.restartBaseMs ?? 500, this.o.restartCapMs ?? 30_000);
      logger.warn({ consumer: name, restartInMs: delay }, 'restarting the consumer');
      await sleep(delay, this.stopSignal.signal);
    }
  }

  /** A deleted consumer is created again (by ending this consume: the loop starts a new one). */
  private watchConsumer(messages: ConsumerMessages): void {
    void (async () => {
      for await (const s of messages.status()) {
        if (s.type === 'consumer_deleted' || s.type === 'consumer_not_found') {
          this.o.logger.warn({ consumer: this.o.consumer, status: s.type }, 'the consumer is gone; re-creating it');
          void messages.close().catch(() => undefined);
          return;
        }
      }
    })().catch(() => undefined);
  }

  private track(p: Promise<void>): void {
    const tracked = p.catch((err: unknown) => {
      this.o.logger.error({ consumer: this.o.consumer, err: errorSummary(err) }, 'message handler failed');
    });
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }
}

/**
 * nak and term are fire-and-forget; with the connection gone, redelivery does the rest. Errors
 * are logged by stream sequence only.
 */
export function settle(msg: JsMsg, how: 'nak' | 'term', logger: Logger, delayMs?: number): void {
  try {
    if (how === 'nak') msg.nak(delayMs);
    else msg.term();
  } catch (err) {
    logger.warn({ seq: msg.info.streamSequence, err: errorSummary(err) }, `could not ${how} the message: it will be delivered again`);
  }
}

/** Tells JetStream the work goes on while `fn` runs, so that slow work is not redelivered. */
export async function keepAlive<T>(msg: JsMsg, ackWaitMs: number, fn: () => Promise<T>): Promise<T> {
  const timer = setInterval(
    () => {
      try {
        msg.working();
      } catch {
        // the connection is away; the message will simply be delivered again
      }
    },
    Math.max(250, Math.floor(ackWaitMs / 3)),
  );
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}
