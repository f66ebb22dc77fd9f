import type { Runnable } from '../runtime/lifecycle.js';
import type { JetStreamClient } from '@nats-io/jetstream';
import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import { type OutboxEvent, deletePublished, relayPending } from '../store/outbox.js';
import { backoffDelay, sleep } from '../runtime/backoff.js';

export interface RelayOptions {
  readonly batchSize?: number;
  /** How often to look for events when nobody said there are some. */
  readonly pollMs?: number;
  readonly maxBackoffMs?: number;
  /** Published rows older than this are deleted (LETHE_OUTBOX_RETENTION). */
  readonly retentionMs: number;
  /** How often, at most, to look for rows past the retention. */
  readonly cleanupIntervalMs?: number;
  readonly now?: () => Date;
}

const CLEANUP_BATCH = 1000;

/**
 * Publishes the outbox to JetStream. Each event goes out with `Nats-Msg-Id` = its id, so a
 * publish repeated after a crash is dropped by the server's duplicate window; a row is marked
 * sent only after its PubAck. While NATS is away it retries with backoff; nothing is lost,
 * the rows wait.
 */
export class OutboxRelay implements Runnable {
  private readonly stopping = new AbortController();
  private wake: AbortController = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(
    private readonly knex: Knex,
    private readonly js: JetStreamClient,
    private readonly logger: Logger,
    private readonly opts: RelayOptions,
  ) {}
  private nextCleanup = 0;

  start(): void {
    this.loop ??= this.run();
  }

  /** There are new events: publish now rather than at the next poll. */
  notify(): void {
    this.wake.abort();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    this.wake.abort();
    await this.loop;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopping.signal.aborted) {
      const wake = this.wake;
      try {
        const sent = await relayPending(this.knex, this.opts.batchSize ?? 100, (e) => this.publish(e));
        if (failures > 0) this.logger.info({ failures }, 'outbox relay recovered');
        failures = 0;
        if (sent > 0) continue;
        await this.cleanUp();
        await sleep(this.opts.pollMs ?? 1_000, AbortSignal.any([wake.signal, this.stopping.signal]));
      } catch (err) {
        failures += 1;
        const delay = backoffDelay(failures, 100, this.opts.maxBackoffMs ?? 30_000);
        if (failures === 1 || failures % 20 === 0) {
          this.logger.warn({ err: errorSummary(err), failures, retryInMs: delay }, 'outbox relay cannot publish; events wait in the outbox');
        }
        await sleep(delay, this.stopping.signal);
      }
      if (wake.signal.aborted) this.wake = new AbortController();
    }
  }

  /** When idle, now and then: deletes published rows past the retention, a batch at a time. */
  private async cleanUp(): Promise<void> {
    const now = (this.opts.now ?? (() => new Date()))();
    if (now.getTime() < this.nextCleanup) return;
    this.nextCleanup = now.getTime() + (this.opts.cleanupIntervalMs ?? 60_000);
    const before = new Date(now.getTime() - this.opts.retentionMs);
    let deleted = 0;
    for (let n = CLEANUP_BATCH; n === CLEANUP_BATCH && !this.stopping.signal.aborted; deleted += n) n = await deletePublished(this.knex, before, CLEANUP_BATCH);
    if (deleted > 0) this.logger.info({ deleted, retentionMs: this.opts.retentionMs }, 'deleted published outbox rows past their retention');
  }

  private async publish(e: OutboxEvent): Promise<void> {
    await this.js.publish(e.subject, e.payload, { msgID: e.id, timeout: 5_000 });
  }
}
