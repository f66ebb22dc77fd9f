import { setTimeout as sleep } from 'node:timers/promises';
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import type { ListenAddress } from '../config/config.js';
import { type SidecarConfig, hashKeyFor } from '../config/sidecar-config.js';
import { ConfigError } from '../errors.js';
import { parseAnonymizedEvent } from '../events/cloudevents.js';
import { connectNats, ensureStream } from '../events/nats.js';
import { natsTlsOptions } from '../tls/client-credentials.js';
import { describeTlsFailure } from '../runtime/tls-errors.js';
import { loadDataMap } from '../privacy/data-map.js';
import { type ForgetPlan, compileForget } from '../privacy/forget.js';
import { purgeForRequest } from '../privacy/purge.js';
import { checkDataMapAgainstDatabase } from '../privacy/schema-check.js';
import { type Database, openDatabase } from '../store/database.js';
import { translateDatabaseError } from '../store/errors.js';
import { migrateSidecar } from '../store/migrations.js';
import { decideOnFailure, retryDelayMs } from './delivery-policy.js';
import { ensureDurableConsumer } from './durable-consumer.js';
import { hitFailpoint } from '../runtime/failpoints.js';
import { type HealthServer, startHealthServer } from '../metrics/health-server.js';
import { failedReceipt, publishReceipt, purgedReceipt, safeErrorSummary } from './receipts.js';
import { Slots } from './slots.js';
import { SidecarMetrics } from '../metrics/sidecar-metrics.js';

type State = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/** How long to wait for the stream to store a receipt. */
const PUBLISH_TIMEOUT_MS = 10_000;
/** How long a drain of the NATS connection may take before the connection is just closed. */
const DRAIN_TIMEOUT_MS = 10_000;
/** Pauses between attempts to restart a consumer that stopped (doubling, capped). */
const RESTART_BASE_MS = 500;
const RESTART_CAP_MS = 30_000;

/**
 * `lethe sidecar`: the purge agent a downstream service runs beside itself. It consumes
 * anonymization events through a durable JetStream consumer named after the service, applies
 * the forget half of the service's own data map to the service's own database (one
 * transaction, once per request), publishes a receipt on privacy.v1.user.purged.<service>,
 * and only then acks.
 *
 * - A redelivered event changes nothing more and is receipted again (same Nats-Msg-Id).
 * - A failed purge is retried with `nak(delay)`, the delay doubling per delivery; on the
 *   last allowed delivery a `failed` receipt is published and the event is terminated.
 * - A purge whose receipt cannot be published is retried without limit: the data is gone, and
 *   only a `purged` receipt would be true.
 * - At most `concurrency` purges run at once.
 * - `stop()` drains: no new pulls, the events already received are finished and acked, then
 *   the NATS connection is drained and the database pool closed.
 *
 * Logs carry request ids and counts, never a user id, a row value or an error message.
 */
export class PurgeSidecar {
  private state: State = 'new';
  private health: HealthServer | undefined;
  private db: Database | undefined;
  private plan: ForgetPlan | undefined;
  private nc: NatsConnection | undefined;
  private jsm: JetStreamManager | undefined;
  private js: JetStreamClient | undefined;
  private connected = false;
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private readonly slots: Slots;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopSignal = new AbortController();
  private readonly metrics = new SidecarMetrics();

  constructor(
    private readonly config: Readonly<SidecarConfig>,
    private readonly logger: Logger,
  ) {
    this.slots = new Slots(config.concurrency);
  }

  /** Where the health endpoints listen, once started. */
  get healthAddress(): ListenAddress | undefined {
    return this.health?.address;
  }

  /** Ready: running, connected to NATS, and consuming. */
  isReady(): boolean {
    return this.state === 'running' && this.connected && this.messages !== undefined;
  }

  /**
   * Checks everything it can before taking any event: the data map against the database, the
   * hash key, the stream and the consumer. Waits for NATS when it is away (it reconnects for
   * ever); /healthz answers meanwhile, /readyz does not.
   */
  start(): Promise<void> {
    if (this.state !== 'new') return Promise.reject(new Error(`the sidecar was already started (${this.state})`));
    this.state = 'starting';
    this.starting = this.startUp();
    return this.starting;
  }

  private async startUp(): Promise<void> {
    const c = this.config;
    try {
      this.health = await startHealthServer(c.healthListen, () => this.isReady(), { metrics: this.metrics.registry }).catch((err: unknown) => {
        throw new ConfigError(`cannot listen on ${c.healthListen.host}:${c.healthListen.port} (${safeErrorSummary(err)})`, '--health-listen', { cause: err });
      });
      const map = await loadDataMap(c.dataMapPath);
      const hashKey = hashKeyFor(c, map);
      const db = await openDatabase({ kind: 'postgres', url: c.databaseUrl, poolMax: c.concurrency + 1, timeouts: c.databaseTimeouts }, this.logger);
      this.db = db;
      try {
        await migrateSidecar(db.knex);
        this.plan = compileForget(map, await checkDataMapAgainstDatabase(db.knex, map, c.dataMapPath), hashKey, c.dataMapPath);
      } catch (err) {
        const tlsFailure = describeTlsFailure(err);
        if (tlsFailure !== undefined)
          throw new ConfigError(`TLS to the database (${db.description}) failed: ${tlsFailure}; check sslrootcert`, 'DATABASE_URL', { cause: err });
        throw translateDatabaseError(err);
      }
      const nc = await connectNats(c.natsUrl, `lethe-sidecar-${c.service}`, this.logger, natsTlsOptions(c.natsTls));
      this.nc = nc;
      this.watchConnection(nc);
      const jsm = await ensureStream(nc, c.stream, this.logger);
      await ensureDurableConsumer(jsm, { stream: c.stream.name, service: c.service, ackWaitMs: c.ackWaitMs });
      this.jsm = jsm;
      this.js = jsm.jetstream();
      if (this.stopSignal.signal.aborted) throw new Error('stopped during start-up');
      this.state = 'running';
      this.loop = this.consumeLoop();
    } catch (err) {
      this.state = 'stopped';
      await this.release();
      throw err;
    }
  }

  /** Drains and stops; safe to call more than once and at any time after start(). */
  stop(): Promise<void> {
    this.stopping ??= this.drainAndStop();
    return this.stopping;
  }

  private async drainAndStop(): Promise<void> {
    if (this.state === 'starting') {
      // Let start-up finish (or fail), then stop what it started.
      this.stopSignal.abort();
      await this.starting?.catch(() => undefined);
    }
    if (this.state === 'new' || this.state === 'stopped') {
      this.state = 'stopped';
      return;
    }
    this.state = 'stopping';
    this.stopSignal.abort();
    this.logger.info({ inFlight: this.inFlight.size }, 'draining: no new events; finishing the ones received');
    // Stop pulling. The events already received still come out of the iterator and are handled.
    void this.messages?.close().catch(() => undefined);
    await this.loop;
    await Promise.allSettled([...this.inFlight]);
    await this.release();
    this.state = 'stopped';
    this.logger.info('sidecar stopped');
  }

  /** Closes what start() opened, in reverse order. */
  private async release(): Promise<void> {
    const nc = this.nc;
    if (nc !== undefined && !nc.isClosed()) {
      const drained = nc.drain().then(
        () => true,
        () => false,
      );
      const timer = new AbortController();
      const timedOut = sleep(DRAIN_TIMEOUT_MS, false, { signal: timer.signal }).catch(() => false);
      const ok = await Promise.race([drained, timedOut]);
      timer.abort();
      if (!ok && !nc.isClosed()) await nc.close().catch(() => undefined);
    }
    this.connected = false;
    await this.db?.close().catch(() => undefined);
    await this.health?.close().catch(() => undefined);
  }

  private watchConnection(nc: NatsConnection): void {
    this.connected = !nc.isClosed();
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') this.connected = false;
        else if (s.type === 'reconnect') this.connected = true;
      }
    })();
    void nc.closed().then(() => {
      this.connected = false;
    });
  }

  /** Pulls events for as long as the sidecar runs; a consumer that stops is started again. */
  private async consumeLoop(): Promise<void> {
    const c = this.config;
    let restarts = 0;
    while (this.state === 'running') {
      try {
        const js = this.need(this.js);
        if (restarts > 0) await ensureDurableConsumer(this.need(this.jsm), { stream: c.stream.name, service: c.service, ackWaitMs: c.ackWaitMs });
        const consumer = await js.consumers.get(c.stream.name, c.service);
        // At most `concurrency` events are pulled ahead of the ones being purged.
        const messages = await consumer.consume({ max_messages: c.concurrency });
        this.messages = messages;
        if (this.state !== 'running') void messages.close();
        else this.logger.info({ consumer: c.service, stream: c.stream.name }, 'consuming anonymization events');
        this.watchConsumer(messages);
        for await (const msg of messages) {
          restarts = 0;
          await this.slots.acquire();
          this.track(this.handle(msg).finally(() => this.slots.release()));
        }
      } catch (err) {
        if (this.state === 'running') this.logger.error({ err: safeErrorSummary(err) }, 'consuming stopped');
      } finally {
        this.messages = undefined;
      }
      if (this.state !== 'running') break;
      restarts++;
      const delay = retryDelayMs(restarts, RESTART_BASE_MS, RESTART_CAP_MS);
      this.logger.warn({ restartInMs: delay }, 'restarting the consumer');
      await sleep(delay, undefined, { signal: this.stopSignal.signal }).catch(() => undefined);
    }
  }

  /** A deleted consumer is re-created (by ending this consume: the loop starts a new one). */
  private watchConsumer(messages: ConsumerMessages): void {
    void (async () => {
      for await (const s of messages.status()) {
        if (s.type === 'consumer_deleted' || s.type === 'consumer_not_found') {
          this.logger.warn({ consumer: this.config.service, status: s.type }, 'the consumer is gone; re-creating it');
          void messages.close().catch(() => undefined);
          return;
        }
      }
    })().catch(() => undefined);
  }

  private track(p: Promise<void>): void {
    const tracked = p.catch((err: unknown) => {
      this.logger.error({ err: safeErrorSummary(err) }, 'event handler failed');
    });
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }

  private async handle(msg: JsMsg): Promise<void> {
    const c = this.config;
    const deliveries = msg.info.deliveryCount;
    const event = parseAnonymizedEvent(msg.data);
    if (event === undefined) {
      // No request id, so no receipt is possible: say so in the log (without the payload) and drop it.
      this.logger.warn({ seq: msg.info.streamSequence, deliveries }, 'not a valid anonymization event: terminated');
      this.settle(msg, 'term');
      this.metrics.event('failed');
      return;
    }
    const { user_id: userId, request_id: requestId } = event.data;
    const log = this.logger.child({ requestId, deliveries });

    const now = new Date();
    let purged: Awaited<ReturnType<typeof purgeForRequest>>;
    const started = performance.now();
    try {
      purged = await this.keepAlive(msg, () => purgeForRequest(this.need(this.db).knex, this.need(this.plan), { subjectId: userId, requestId, now }));
    } catch (err) {
      this.metrics.purgeTook((performance.now() - started) / 1_000);
      await this.purgeFailed(msg, log, { userId, requestId, deliveries, err });
      return;
    }
    this.metrics.purgeTook((performance.now() - started) / 1_000);

    try {
      const ack = await this.keepAlive(msg, () =>
        publishReceipt(
          this.need(this.js),
          purgedReceipt({ service: c.service, userId, requestId, purgedAt: now, rowsAffected: purged.rowsAffected }),
          PUBLISH_TIMEOUT_MS,
        ),
      );
      log.info(
        { replayed: purged.replayed, rows: purged.rowsAffected.reduce((n, r) => n + r.rows, 0), duplicateReceipt: ack.duplicate },
        purged.replayed ? 'already purged: receipt published again' : 'purged: receipt published',
      );
      this.metrics.event(purged.replayed ? 'duplicate' : 'purged');
    } catch (err) {
      // The data is purged; only a `purged` receipt would be true, so keep trying to send it.
      const delayMs = retryDelayMs(deliveries, c.retryBaseMs);
      (deliveries >= c.maxDeliveries ? log.error.bind(log) : log.warn.bind(log))(
        { err: safeErrorSummary(err), retryInMs: delayMs },
        'purged, but the receipt was not published: will retry',
      );
      this.settle(msg, 'nak', delayMs);
      this.metrics.event('retried');
      return;
    }

    hitFailpoint(c.failpoints, 'sidecar-before-ack');
    try {
      await msg.ackAck();
    } catch (err) {
      log.warn({ err: safeErrorSummary(err) }, 'ack not confirmed: the event may be delivered again (harmless: the purge is idempotent)');
    }
  }

  private async purgeFailed(msg: JsMsg, log: Logger, f: { userId: string; requestId: string; deliveries: number; err: unknown }): Promise<void> {
    const c = this.config;
    const decision = decideOnFailure(f.deliveries, c.maxDeliveries, c.retryBaseMs);
    const summary = safeErrorSummary(f.err);
    if (decision.kind === 'retry') {
      log.warn({ err: summary, retryInMs: decision.delayMs, maxDeliveries: c.maxDeliveries }, 'purge failed: will retry');
      this.settle(msg, 'nak', decision.delayMs);
      this.metrics.event('retried');
      return;
    }
    try {
      const receipt = failedReceipt({
        service: c.service,
        userId: f.userId,
        requestId: f.requestId,
        failedAt: new Date(),
        deliveries: f.deliveries,
        error: f.err,
      });
      await publishReceipt(this.need(this.js), receipt, PUBLISH_TIMEOUT_MS);
    } catch (err) {
      // Without a receipt the failure would be silent: keep the event and try again later.
      const delayMs = retryDelayMs(f.deliveries, c.retryBaseMs);
      log.error({ err: summary, receiptErr: safeErrorSummary(err), retryInMs: delayMs }, 'purge failed and the failure receipt was not published: will retry');
      this.settle(msg, 'nak', delayMs);
      this.metrics.event('retried');
      return;
    }
    log.error({ err: summary, maxDeliveries: c.maxDeliveries }, 'purge failed on the last allowed delivery: failure receipt published, event terminated');
    this.settle(msg, 'term');
    this.metrics.event('failed');
  }

  /** Tells JetStream the work goes on while `fn` runs, so a slow purge is not redelivered. */
  private async keepAlive<T>(msg: JsMsg, fn: () => Promise<T>): Promise<T> {
    const timer = setInterval(
      () => {
        try {
          msg.working();
        } catch {
          // the connection is away; the event will simply be delivered again
        }
      },
      Math.max(250, Math.floor(this.config.ackWaitMs / 3)),
    );
    try {
      return await fn();
    } finally {
      clearInterval(timer);
    }
  }

  /** nak and term are fire-and-forget; with the connection gone, redelivery does the rest. */
  private settle(msg: JsMsg, how: 'nak' | 'term', delayMs?: number): void {
    try {
      if (how === 'nak') msg.nak(delayMs);
      else msg.term();
    } catch (err) {
      this.logger.warn({ seq: msg.info.streamSequence, err: safeErrorSummary(err) }, `could not ${how} the event: it will be delivered again`);
    }
  }

  private need<T>(value: T | undefined): T {
    if (value === undefined) throw new Error('the sidecar is not started');
    return value;
  }
}
