import { type JetStreamClient, jetstream } from '@nats-io/jetstream';
import type { NatsConnection, TlsOptions } from '@nats-io/nats-core';
import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import { backoffDelay, sleep } from '../runtime/backoff.js';
import type { Runnable } from '../runtime/lifecycle.js';
import { type StreamSettings, closeNats, connectNats, describeNatsUrl, ensureStream } from './nats.js';
import { OutboxRelay } from './outbox-relay.js';
import { ChangeValuesResponder, type ValuesLookup } from './change-values.js';
import type { CryptoKey } from 'jose';
import { type RecordConfirmations, ReceiptConsumer } from './receipt-consumer.js';

/** How long a drain of the NATS connection may take before the connection is just closed. */
const DRAIN_TIMEOUT_MS = 10_000;

export interface ServerEventsOptions {
  readonly natsUrl: string;
  /** From natsTlsOptions: the files were checked at start-up. */
  readonly tls: TlsOptions | undefined;
  readonly stream: StreamSettings;
  /** Where receipts go: the engine's recordConfirmations. */
  readonly recordConfirmations: RecordConfirmations;
  /** Published outbox rows are deleted after this long. */
  readonly outboxRetentionMs: number;
  readonly outboxCleanupIntervalMs?: number;
  /** Answers the sidecars' requests for rectification values; unset without an export signing key. */
  readonly changeValues?: { readonly lookup: ValuesLookup; readonly signingKey: CryptoKey } | undefined;
}

/**
 * The server's side of NATS: the outbox relay and the receipt consumer. Started in the
 * background so that a NATS that is away never keeps the PrivacyService from serving; until
 * it comes, events wait in the outbox.
 */
export class ServerEvents implements Runnable {
  private readonly stopping = new AbortController();
  private nc: NatsConnection | undefined;
  private relay: OutboxRelay | undefined;
  private receipts: ReceiptConsumer | undefined;
  private changeReceipts: ReceiptConsumer | undefined;
  private values: ChangeValuesResponder | undefined;
  private starting: Promise<void> | undefined;

  constructor(
    private readonly knex: Knex,
    private readonly opts: ServerEventsOptions,
    private readonly logger: Logger,
  ) {}

  start(): void {
    this.starting ??= this.connectAndRun();
  }

  /** The NATS connection, once made (downstream exports use it too). */
  get connection(): NatsConnection | undefined {
    return this.nc;
  }

  notify(): void {
    this.relay?.notify();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.relay?.stop();
    await this.values?.stop();
    await this.receipts?.stop();
    await this.changeReceipts?.stop();
    if (this.nc !== undefined) await closeNats(this.nc, DRAIN_TIMEOUT_MS);
    // A connect still waiting for a first NATS is abandoned.
    await Promise.race([this.starting, sleep(100)]);
  }

  private async connectAndRun(): Promise<void> {
    const nc = await connectNats(this.opts.natsUrl, 'lethe-server', this.logger, this.opts.tls);
    if (this.stopping.signal.aborted) {
      await nc.close();
      return;
    }
    this.nc = nc;
    this.logger.info({ nats: describeNatsUrl(this.opts.natsUrl), tls: this.opts.tls !== undefined, stream: this.opts.stream.name }, 'connected to NATS');
    let attempt = 0;
    while (!this.stopping.signal.aborted) {
      try {
        const jsm = await ensureStream(nc, this.opts.stream, this.logger);
        const js: JetStreamClient = jetstream(nc);
        this.relay = new OutboxRelay(this.knex, js, this.logger, {
          retentionMs: this.opts.outboxRetentionMs,
          cleanupIntervalMs: this.opts.outboxCleanupIntervalMs,
        });
        this.relay.start();
        this.receipts = new ReceiptConsumer(this.opts.recordConfirmations, js, jsm, this.opts.stream.name, this.logger);
        await this.receipts.start();
        this.changeReceipts = new ReceiptConsumer(this.opts.recordConfirmations, js, jsm, this.opts.stream.name, this.logger, 'change');
        await this.changeReceipts.start();
        const cv = this.opts.changeValues;
        if (cv !== undefined && this.values === undefined) {
          this.values = new ChangeValuesResponder(nc, cv.lookup, cv.signingKey, this.logger);
          this.values.start();
        }
        return;
      } catch (err) {
        attempt += 1;
        const delay = backoffDelay(attempt, 500, 30_000);
        this.logger.warn({ err: errorSummary(err), retryInMs: delay }, 'cannot set up the JetStream stream or consumer; retrying');
        await this.relay?.stop();
        this.relay = undefined;
        await this.receipts?.stop().catch(() => undefined);
        this.receipts = undefined;
        await this.changeReceipts?.stop().catch(() => undefined);
        this.changeReceipts = undefined;
        await sleep(delay, this.stopping.signal);
      }
    }
  }
}
