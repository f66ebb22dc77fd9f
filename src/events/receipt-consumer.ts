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
        r && {
          requestId: r.request_id,
          service: r.service,
          status: r.status,
          rowsAffected: r.rows_affected,
          purgedAt: new Date(r.applied_at),
          error: r.error,
          change: true,
        }
      );
    },
  },
} as const;
/** Receipts in hand at once: waiting for their batch, or in it. */
const CONCURRENCY = 64;
/** Receipts per batch, and batches being recorded at once (receipts of one request take turns on its ledger row). */
const BATCH = 32;
const BATCHES_AT_ONCE = 2;
const ACK_WAIT_MS = 30_000;

/** The engine's recordConfirmations: receipts go into the ledger through the engine, like everything else; an outcome each. */
export type RecordConfirmations = (receipts: readonly NewConfirmation[]) => Promise<ConfirmationOutcome[]>;

/**
 * Records downstream receipts in the ledger through a durable consumer shared by every server
 * replica (each receipt is handled by one of them). Invalid receipts are terminated and
 * logged; a database error is retried with `nak(delay)`. Each is acknowledged once its batch
 * is committed: receipts that arrive while a batch is being recorded wait for the next, so a
 * lone receipt is recorded at once and a burst in a few transactions.
 */
export class ReceiptConsumer implements Runnable {
  private readonly worker: DurableWorker;
  private readonly batcher: Batcher;
  private readonly kind: (typeof KINDS)[keyof typeof KINDS];

  constructor(record: RecordConfirmations, js: JetStreamClient, jsm: JetStreamManager, stream: string, logger: Logger, kind: keyof typeof KINDS = 'purge') {
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
    this.batcher = new Batcher(record);
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
      const outcome = await this.batcher.record(r);
      logger.info({ requestId: r.requestId, service: r.service, status: r.status, outcome }, 'downstream receipt');
      m.ack();
    } catch (err) {
      logger.warn({ requestId: r.requestId, service: r.service, err: errorSummary(err) }, 'cannot record a receipt; will retry');
      settle(m, 'nak', logger, backoffDelay(m.info.deliveryCount, 500, 30_000));
    }
  }
}

type Settled = { ok: true; outcome: ConfirmationOutcome } | { ok: false; error: unknown };

/** Gathers receipts into batches: one is recorded as soon as fewer than BATCHES_AT_ONCE are being recorded. */
class Batcher {
  private readonly waiting: Array<{ receipt: NewConfirmation; settle: (s: Settled) => void }> = [];
  private recording = 0;

  constructor(private readonly recordAll: RecordConfirmations) {}

  record(receipt: NewConfirmation): Promise<ConfirmationOutcome> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ receipt, settle: (s) => (s.ok ? resolve(s.outcome) : reject(s.error)) });
      this.next();
    });
  }

  private next(): void {
    if (this.recording >= BATCHES_AT_ONCE || this.waiting.length === 0) return;
    const batch = this.waiting.splice(0, BATCH);
    this.recording++;
    void this.recordBatch(batch.map((b) => b.receipt)).then((settled) => {
      batch.forEach((b, i) => b.settle(settled[i] ?? { ok: false, error: new Error('no outcome for a receipt') }));
      this.recording--;
      this.next();
    });
  }

  /** An outcome or a failure per receipt: a batch that fails is recorded one by one, so that one bad receipt fails alone. */
  private async recordBatch(receipts: readonly NewConfirmation[]): Promise<Settled[]> {
    const attempt = async (some: readonly NewConfirmation[]): Promise<Settled[]> => {
      try {
        return (await this.recordAll(some)).map((outcome) => ({ ok: true, outcome }));
      } catch (error) {
        return some.map(() => ({ ok: false, error }));
      }
    };
    const all = await attempt(receipts);
    if (receipts.length === 1 || all.every((s) => s.ok)) return all;
    const one: Settled[] = [];
    for (const r of receipts) one.push(...(await attempt([r])));
    return one;
  }
}
