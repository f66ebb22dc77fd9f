import { AckPolicy, DeliverPolicy, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import type { ConfirmationOutcome, NewConfirmation } from '../store/ledger.js';
import { backoffDelay } from '../runtime/backoff.js';
import { parsePurgedEvent } from './cloudevents.js';
import { RECEIPTS_FILTER } from './subjects.js';

const LEDGER_CONSUMER = 'lethe-ledger';
/** Receipts recorded at once; receipts of one request serialize on its ledger row. */
const CONCURRENCY = 16;

/**
 * Records downstream receipts in the ledger through a durable consumer shared by every server
 * replica (each receipt is handled by one of them). Invalid receipts are terminated and
 * logged; a database error is retried with `nak(delay)`.
 */
/** The engine's recordConfirmation: receipts go into the ledger through the engine, like everything else. */
export type RecordConfirmation = (c: NewConfirmation) => Promise<ConfirmationOutcome>;

export class ReceiptConsumer {
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly record: RecordConfirmation,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly stream: string,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await this.jsm.consumers.add(this.stream, {
      durable_name: LEDGER_CONSUMER,
      filter_subject: RECEIPTS_FILTER,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: 30_000_000_000,
    });
    const consumer = await this.js.consumers.get(this.stream, LEDGER_CONSUMER);
    const messages = await consumer.consume({ max_messages: 2 * CONCURRENCY });
    this.messages = messages;
    this.loop = (async () => {
      for await (const m of messages) {
        if (this.inFlight.size >= CONCURRENCY) await Promise.race(this.inFlight);
        const p = this.handle(m).finally(() => this.inFlight.delete(p));
        this.inFlight.add(p);
      }
    })();
  }

  async stop(): Promise<void> {
    this.messages?.stop();
    await this.loop;
    await Promise.allSettled([...this.inFlight]);
  }

  private async handle(m: JsMsg): Promise<void> {
    const event = parsePurgedEvent(m.data);
    if (event === undefined) {
      this.logger.warn({ subject: m.subject, seq: m.seq }, 'ignoring a receipt that is not a valid purge CloudEvent');
      m.term('invalid receipt');
      return;
    }
    const r = event.data;
    try {
      const outcome = await this.record({
        requestId: r.request_id,
        service: r.service,
        status: r.status,
        rowsAffected: r.rows_affected,
        purgedAt: new Date(r.purged_at),
        error: r.error,
      });
      this.logger.info({ requestId: r.request_id, service: r.service, status: r.status, outcome }, 'downstream receipt');
      m.ack();
    } catch (err) {
      this.logger.warn({ requestId: r.request_id, service: r.service, err: errorSummary(err) }, 'cannot record a receipt; will retry');
      m.nak(backoffDelay(m.info.deliveryCount, 500, 30_000));
    }
  }
}
