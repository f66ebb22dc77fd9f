import { AckPolicy, DeliverPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import type { ConfirmationOutcome, NewConfirmation } from '../store/ledger.js';
import { backoffDelay } from '../runtime/backoff.js';
import type { Runnable } from '../runtime/lifecycle.js';
import { parseAppliedEvent, parsePurgedEvent } from './cloudevents.js';
import { DurableWorker, settle } from './durable-worker.js';
import { APPLIED_FILTER, RECEIPTS_FILTER } from './subjects.js';

/** Purge receipts (of forgets) and change receipts (of rectifications and processing choices): one consumer each. */
const KINDS = {
  purge: {
    consumer: 'lethe-ledger',
    filter: RECEIPTS_FILTER,
    what: 'downstream receipts',
    parse: (data: Uint8Array): NewConfirmation | undefined => {
      const r = parsePurgedEvent(data)?.data;
      return (
        r && { requestId: r.request_id, service: r.service, status: r.status, rowsAffected: r.rows_affected, purgedAt: new Date(r.purged_at), error: r.error }
      );
    },
  },
  change: {
    consumer: 'lethe-ledger-changes',
    filter: APPLIED_FILTER,
    what: 'downstream change receipts',
    parse: (data: Uint8Array): NewConfirmation | undefined => {
      const r = parseAppliedEvent(data)?.data;
      return (
        r && { requestId: r.request_id, service: r.service, status: r.status, rowsAffected: r.rows_affected, purgedAt: new Date(r.applied_at), error: r.error }
      );
    },
  },
} as const;
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
  private readonly kind: (typeof KINDS)[keyof typeof KINDS];

  constructor(
    private readonly record: RecordConfirmation,
    js: JetStreamClient,
    jsm: JetStreamManager,
    stream: string,
    logger: Logger,
    kind: keyof typeof KINDS = 'purge',
  ) {
    const k = KINDS[kind];
    this.kind = k;
    this.worker = new DurableWorker({
      js,
      stream,
      consumer: k.consumer,
      ensureConsumer: () =>
        jsm.consumers.add(stream, {
          durable_name: k.consumer,
          filter_subject: k.filter,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
          ack_wait: nanos(ACK_WAIT_MS),
        }),
      concurrency: CONCURRENCY,
      handle: (m, log) => this.handle(m, log),
      what: k.what,
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
    const r = this.kind.parse(m.data);
    if (r === undefined) {
      logger.warn({ subject: m.subject, seq: m.seq }, 'ignoring a receipt that is not a valid receipt CloudEvent');
      settle(m, 'term', logger);
      return;
    }
    try {
      const outcome = await this.record(r);
      logger.info({ requestId: r.requestId, service: r.service, status: r.status, outcome }, 'downstream receipt');
      m.ack();
    } catch (err) {
      logger.warn({ requestId: r.requestId, service: r.service, err: errorSummary(err) }, 'cannot record a receipt; will retry');
      settle(m, 'nak', logger, backoffDelay(m.info.deliveryCount, 500, 30_000));
    }
  }
}
