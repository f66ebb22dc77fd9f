import type { JetStreamClient, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import type { ListenAddress } from '../config/config.js';
import { type SidecarConfig, hashKeyFor } from '../config/sidecar-config.js';
import { ConfigError } from '../errors.js';
import { parseAnonymizedEvent } from '../events/cloudevents.js';
import { closeNats, connectNats, ensureStream } from '../events/nats.js';
import { Lifecycle } from '../runtime/lifecycle.js';
import { loadExportVerifyKey } from '../auth/export-keys.js';
import { SnapshotReader } from '../privacy/snapshot-reader.js';
import type { ColumnTypes } from '../privacy/sql.js';
import { ExportResponder } from './export-responder.js';
import { natsTlsOptions } from '../tls/client-credentials.js';
import { describeTlsFailure } from '../runtime/tls-errors.js';
import { loadDataMap } from '../privacy/data-map.js';
import type { ForgetPlan } from '../privacy/forget.js';
import { preparePurgePlan, purgeForRequest } from '../privacy/purge.js';
import { checkDataMapAgainstDatabase } from '../privacy/schema-check.js';
import { type Database, openDatabase } from '../store/database.js';
import { translateDatabaseError } from '../store/errors.js';
import { migrateSidecar } from '../store/migrations.js';
import { decideOnFailure, retryDelayMs } from '../events/delivery-policy.js';
import { DurableWorker, keepAlive, settle } from '../events/durable-worker.js';
import { ensureChangesConsumer, ensureDurableConsumer, changesConsumerName } from './durable-consumer.js';
import { ChangeApplier } from './change-applier.js';
import { compileRectify } from '../privacy/rectify.js';
import { hitFailpoint } from '../runtime/failpoints.js';
import { type HealthServer, startHealthServer } from '../metrics/health-server.js';
import { failedReceipt, publishReceipt, purgedReceipt, safeErrorSummary } from './receipts.js';
import { SidecarMetrics } from '../metrics/sidecar-metrics.js';

/** Records per export chunk a sidecar sends, in bytes of JSON text (NATS takes 1 MB). */
const CHUNK_BYTES = 128 * 1024;

type State = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/** How long to wait for the stream to store a receipt. */
const PUBLISH_TIMEOUT_MS = 10_000;
/** How long a drain of the NATS connection may take before the connection is just closed. */
const DRAIN_TIMEOUT_MS = 10_000;

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
  private js: JetStreamClient | undefined;
  private worker: DurableWorker | undefined;
  private connected = false;
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private readonly stopSignal = new AbortController();
  private readonly metrics = new SidecarMetrics();
  private readonly life: Lifecycle;

  constructor(
    private readonly config: Readonly<SidecarConfig>,
    private readonly logger: Logger,
  ) {
    this.life = new Lifecycle(logger);
  }

  /** Where the health endpoints listen, once started. */
  get healthAddress(): ListenAddress | undefined {
    return this.health?.address;
  }

  /** Ready: running, connected to NATS, and consuming. */
  isReady(): boolean {
    return this.state === 'running' && this.connected && this.worker?.consuming === true;
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
    const life = this.life;
    try {
      this.health = await life.open(
        'health listener',
        () =>
          startHealthServer(c.healthListen, () => this.isReady(), { metrics: this.metrics.registry }).catch((err: unknown) => {
            throw new ConfigError(`cannot listen on ${c.healthListen.host}:${c.healthListen.port} (${safeErrorSummary(err)})`, '--health-listen', {
              cause: err,
            });
          }),
        (h) => h.close().catch(() => undefined),
      );
      const map = await loadDataMap(c.dataMapPath);
      const hashKey = hashKeyFor(c, map);
      const verifyKey = c.exports.verifyKeyFile === undefined ? undefined : await loadExportVerifyKey(c.exports.verifyKeyFile, 'LETHE_EXPORT_VERIFY_KEY_FILE');
      let columnTypes: ColumnTypes;
      const db = await life.open(
        'database',
        () => openDatabase({ kind: 'postgres', url: c.databaseUrl, poolMax: c.concurrency + 1, timeouts: c.databaseTimeouts }, this.logger),
        (d) => d.close().catch(() => undefined),
      );
      this.db = db;
      try {
        await migrateSidecar(db.knex);
        columnTypes = await checkDataMapAgainstDatabase(db.knex, map, c.dataMapPath);
        this.plan = await preparePurgePlan(db.knex, map, columnTypes, hashKey, c.dataMapPath);
      } catch (err) {
        const tlsFailure = describeTlsFailure(err);
        if (tlsFailure !== undefined)
          throw new ConfigError(`TLS to the database (${db.description}) failed: ${tlsFailure}; check sslrootcert`, 'DATABASE_URL', { cause: err });
        throw translateDatabaseError(err);
      }
      const nc = await life.open(
        'NATS connection',
        () => connectNats(c.natsUrl, `lethe-sidecar-${c.service}`, this.logger, natsTlsOptions(c.natsTls)),
        async (n) => {
          await closeNats(n, DRAIN_TIMEOUT_MS);
          this.connected = false;
        },
      );
      this.watchConnection(nc);
      if (verifyKey === undefined) {
        this.logger.warn(
          'export requests are not answered: set LETHE_EXPORT_VERIFY_KEY_FILE to the server’s export key (public), or exports will lack this service’s data',
        );
      } else {
        await life.start(
          'export responder',
          new ExportResponder({
            nc,
            knex: db.knex,
            // Larger chunks than the server's gRPC batches: each one is sealed and acknowledged
            // on its own (bench/RESULTS.md, downstream-export).
            reader: new SnapshotReader(map, columnTypes, { batchBytes: CHUNK_BYTES }),
            service: c.service,
            verifyKey,
            concurrency: c.exports.concurrency,
            ackTimeoutMs: c.exports.ackTimeoutMs,
            logger: this.logger,
          }),
        );
      }
      const jsm = await ensureStream(nc, c.stream, this.logger);
      this.js = jsm.jetstream();
      // At most `concurrency` events are pulled ahead of the ones being purged.
      const worker = new DurableWorker({
        js: this.js,
        stream: c.stream.name,
        consumer: c.service,
        ensureConsumer: () => ensureDurableConsumer(jsm, { stream: c.stream.name, service: c.service, ackWaitMs: c.ackWaitMs }),
        concurrency: c.concurrency,
        handle: (msg) => this.handle(msg),
        what: 'anonymization events',
        logger: this.logger,
      });
      this.worker = worker;
      const consumer = { stream: c.stream.name, service: c.service, ackWaitMs: c.ackWaitMs };
      const changes = new DurableWorker({
        js: this.js,
        stream: c.stream.name,
        consumer: changesConsumerName(c.service),
        ensureConsumer: () => ensureChangesConsumer(jsm, consumer),
        concurrency: c.concurrency,
        handle: (msg) => applier.handle(msg),
        what: 'change events',
        // A stream that does not carry privacy.v1.change.* must not stop the purges.
        setUpInBackground: true,
        logger: this.logger,
      });
      const applier = new ChangeApplier({
        knex: db.knex,
        nc,
        js: this.js,
        plan: compileRectify(map),
        service: c.service,
        verifyKey,
        ackWaitMs: c.ackWaitMs,
        maxDeliveries: c.maxDeliveries,
        retryBaseMs: c.retryBaseMs,
        logger: this.logger,
      });
      if (this.stopSignal.signal.aborted) throw new Error('stopped during start-up');
      this.state = 'running';
      await life.start('anonymization events consumer', worker);
      await life.start('change events consumer', changes);
    } catch (err) {
      this.state = 'stopped';
      await life.stop().catch(() => undefined);
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
    this.logger.info({ inFlight: this.worker?.inFlightCount ?? 0 }, 'draining: no new events; finishing the ones received');
    // In reverse order of start: the consumer (finishing the events received), NATS, the pool, the listener.
    await this.life.stop();
    this.state = 'stopped';
    this.logger.info('sidecar stopped');
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

  private async handle(msg: JsMsg): Promise<void> {
    const c = this.config;
    const deliveries = msg.info.deliveryCount;
    const event = parseAnonymizedEvent(msg.data);
    if (event === undefined) {
      // No request id, so no receipt is possible: say so in the log (without the payload) and drop it.
      this.logger.warn({ seq: msg.info.streamSequence, deliveries }, 'not a valid anonymization event: terminated');
      settle(msg, 'term', this.logger);
      this.metrics.event('failed');
      return;
    }
    const { user_id: userId, request_id: requestId } = event.data;
    const log = this.logger.child({ requestId, deliveries });

    const now = new Date();
    let purged: Awaited<ReturnType<typeof purgeForRequest>>;
    const started = performance.now();
    try {
      purged = await keepAlive(msg, c.ackWaitMs, () => purgeForRequest(this.need(this.db).knex, this.need(this.plan), { subjectId: userId, requestId, now }));
    } catch (err) {
      this.metrics.purgeTook((performance.now() - started) / 1_000);
      await this.purgeFailed(msg, log, { userId, requestId, deliveries, err });
      return;
    }
    this.metrics.purgeTook((performance.now() - started) / 1_000);

    try {
      const ack = await keepAlive(msg, c.ackWaitMs, () =>
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
      settle(msg, 'nak', this.logger, delayMs);
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
      settle(msg, 'nak', this.logger, decision.delayMs);
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
      settle(msg, 'nak', this.logger, delayMs);
      this.metrics.event('retried');
      return;
    }
    log.error({ err: summary, maxDeliveries: c.maxDeliveries }, 'purge failed on the last allowed delivery: failure receipt published, event terminated');
    settle(msg, 'term', this.logger);
    this.metrics.event('failed');
  }

  private need<T>(value: T | undefined): T {
    if (value === undefined) throw new Error('the sidecar is not started');
    return value;
  }
}
