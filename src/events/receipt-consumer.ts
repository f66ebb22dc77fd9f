import { AckPolicy, DeliverPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import type { ConfirmationOutcome, NewConfirmation } from '../store/ledger.js';
import { backoffDelay } from '../runtime/backoff.js';
import type { Runnable } from '../runtime/lifecycle.js';
import { parsePurgedEvent } from './cloudevents.js';
import { DurableWorker, settle } from './durable-worker.js';
import { RECEIPTS_FILTER } from './subjects.js';

const LEDGER_CONSUMER = 'lethe-ledger';
/** Receipts recorded at once; receipts of one request serialize on its ledger row. */
const CONCURRENCY = 16;
const ACK_WAIT_MS = 30_000;

/** The engine's recordConfirmation: receipts go into the ledger through the engine, like everything else. */
export type RecordConfirmation = (c: NewConfirmation) => Promise<ConfirmationOutcome>;

/**
 * Records downstream receipts in the ledger through a durable consumer shared by every server
 * replica (each receipt is handled by one of them). Invalid receipts are terminated and
 * logged; a database error is retried with `nak(delay)`.
 */
export class ReceiptConsumer implements Runnable {
  private readonly worker: DurableWorker;

  constructor(
    private readonly record: RecordConfirmation,
    js: JetStreamClient,
    jsm: JetStreamManager,
    stream: string,
    logger: Logger,
  ) {
    this.worker = new DurableWorker({
      js,
      stream,
      consumer: LEDGER_CONSUMER,
      ensureConsumer: () =>
        jsm.consumers.add(stream, {
          durable_name: LEDGER_CONSUMER,
          filter_subject: RECEIPTS_FILTER,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
          ack_wait: nanos(ACK_WAIT_MS),
        }),
      concurrency: CONCURRENCY,
      handle: (m, log) => this.handle(m, log),
      what: 'downstream receipts',
      logger,
    });
  }

  start(): Promise<void> {
    return this.worker.start();
  }

  stop(): Promise<void> {
    return this.worker.stop();
  }

  private async handle(m: JsMsg, logger: Logger): Promise<void> {
    const event = parsePurgedEvent(m.data);
    if (event === undefined) {
      logger.warn({ subject: m.subject, seq: m.seq }, 'ignoring a receipt that is not a valid purge CloudEvent');
      settle(m, 'term', logger);
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
      logger.info({ requestId: r.request_id, service: r.service, status: r.status, outcome }, 'downstream receipt');
      m.ack();
    } catch (err) {
      logger.warn({ requestId: r.request_id, service: r.service, err: errorSummary(err) }, 'cannot record a receipt; will retry');
      settle(m, 'nak', logger, backoffDelay(m.info.deliveryCount, 500, 30_000));
    }
  }
}
