import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { CryptoKey } from 'jose';
import { ensureLocalExportKey, loadExportSigningKey } from '../auth/export-keys.js';
import { createVerifier } from '../auth/verifier.js';
import { DownstreamExports } from '../events/downstream-exports.js';
import { UnaskedDownstream } from '../privacy/downstream.js';
import type { ServerConfig } from '../config/config.js';
import { ConfigError, UnavailableError, errorSummary } from '../errors.js';
import { loadDataMap } from '../privacy/data-map.js';
import { ArtifactCipher, artifactKeyId } from '../privacy/artifact-cipher.js';
import { Lifecycle } from '../runtime/lifecycle.js';
import { PeriodicTask } from '../runtime/periodic-task.js';
import { startHttpServer } from '../http/http-server.js';
import { LETHE_VERSION } from '../runtime/version.js';
import { workers } from '../store/workers.js';
import { ledger } from '../store/ledger.js';
import { PrivacyEngine } from '../privacy/engine.js';
import { usesHash } from '../privacy/forget.js';
import { prepareServerDataMap } from '../privacy/lethe-tables.js';
import { DEFAULT_DATABASE_TIMEOUTS, type Database, openDatabase } from '../store/database.js';
import { lockDataDir } from '../store/data-dir-lock.js';
import { translateDatabaseError } from '../store/errors.js';
import { loadDemoData } from '../store/demo-data.js';
import { migrateIdentitySchema, migrateLethe } from '../store/migrations.js';
import { startGrpcServer } from './grpc-server.js';
import { DatabaseHealth } from './database-health.js';
import { PageTokens } from '../api/page-token.js';
import { ServerEvents } from '../events/server-events.js';
import type { RecordConfirmations } from '../events/receipt-consumer.js';
import { countPending } from '../store/outbox.js';
import { startHealthServer } from '../metrics/health-server.js';
import { ServerMetrics } from '../metrics/server-metrics.js';
import { natsTlsOptions } from '../tls/client-credentials.js';
import { describeTlsFailure } from '../runtime/tls-errors.js';
import { ReloadingServerCredentials, logHandshakeFailure, observeHandshakeFailures } from '../tls/server-credentials.js';

export interface RunningServer {
  readonly port: number;
  /** The plaintext health-only port (LETHE_GRPC_HEALTH_LISTEN); undefined without it. */
  readonly healthPort: number | undefined;
  /** The serving TLS credentials; undefined for plaintext. */
  readonly tls: ReloadingServerCredentials | undefined;
  /** The bound port of `GET /metrics`; undefined without LETHE_METRICS_LISTEN. */
  readonly metricsPort: number | undefined;
  /** The bound port of the HTTP API; undefined when it is not served. */
  readonly httpPort: number | undefined;
  /** The ordered shutdown: health NOT_SERVING, stop accepting, finish or cancel calls, close the pool. */
  stop(graceMs?: number): Promise<void>;
}

/** How often a replica beats, and after how long without a beat its running requests are failed. */
const HEARTBEAT_MS = 5_000;
const WORKER_STALE_MS = 15_000;
const RECOVERY_MS = 5_000;
/** How often each replica looks for scheduled erasures whose time has come. */
const SCHEDULER_MS = 5_000;

/** Starts Lethe's PrivacyService as configured. Everything is checked before it listens. */
export async function startLetheServer(config: ServerConfig, logger: Logger): Promise<RunningServer> {
  const dataMap = await loadDataMap(config.dataMapPath);
  if (dataMap.subject === undefined) {
    throw new ConfigError("the server needs a top-level 'subject' (the table whose row is the person) to answer 'User not found'", config.dataMapPath);
  }
  const hashKey = usesHash(dataMap) ? await resolveHashKey(config) : undefined;
  const artifactKey = config.artifacts.key ?? (await keyInDataDir(config.dataDir, 'artifact-key'));
  // TLS files are checked before anything else starts: a wrong file stops start-up, naming it.
  const tls = config.tls === undefined ? undefined : await ReloadingServerCredentials.load(config.tls, logger);
  const natsTls = natsTlsOptions(config.events.natsTls);
  const exportKey = await downstreamExportKey(config);
  const verify = await createVerifier(config.auth, config.dataDir, config.platformPrincipals, { serviceAccounts: config.serviceAccounts, logger });

  const life = new Lifecycle(logger);
  let graceMs = 10_000;
  let serving = true;
  return life.build(async () => {
    if (tls !== undefined) life.defer('TLS credentials', () => tls.close());
    if (config.database.kind === 'pglite') life.defer('data directory lock', await lockDataDir(config.dataDir));
    const db = await life.open(
      'database',
      () => openDatabase(config.database, logger),
      (d) => d.close(),
    );
    await migrateLethe(db.knex).catch((err: unknown) => {
      const tlsFailure = describeTlsFailure(err);
      if (tlsFailure !== undefined)
        throw new ConfigError(`TLS to the database (${db.description}) failed: ${tlsFailure}; check sslrootcert`, 'DATABASE_URL', { cause: err });
      const e = translateDatabaseError(err);
      if (e instanceof UnavailableError) {
        throw new UnavailableError(`cannot reach the database (${db.description}); check DATABASE_URL and that the server is up`, { cause: err });
      }
      throw e;
    });
    if (config.migrateIdentitySchema) await migrateIdentitySchema(db.knex);
    if (config.demo) logger.info({ demo: await loadDemoData(db.knex) }, 'demo data');
    const prepared = await prepareServerDataMap(db.knex, dataMap, config.dataMapPath, hashKey);
    const ev = config.events;
    // The relay and the receipt consumer get a small pool of their own, so that a queue of
    // ForgetUser calls never starves them (PGlite has a single connection to share).
    const postgres = config.database.kind === 'postgres' ? config.database : undefined;
    const eventsDb =
      ev.natsUrl !== undefined && postgres !== undefined
        ? await life.open(
            'events database pool',
            () => openDatabase({ ...postgres, poolMax: 4 }, logger),
            (d) => d.close(),
          )
        : undefined;
    const outboxDb = (eventsDb ?? db).knex;
    // Assigned below, once the engine it hands receipts to exists; the engine only notifies it.
    let events: ServerEvents | undefined;
    const workerId = randomUUID();
    const engine = new PrivacyEngine({
      knex: db.knex,
      dataMap: prepared.dataMap,
      columnTypes: prepared.columnTypes,
      forgetPlan: prepared.forgetPlan,
      logger,
      eventSource: ev.source,
      expectedServices: ev.expectedServices,
      confirmationTimeoutMs: ev.confirmationTimeoutMs,
      onEventEnqueued: () => events?.notify(),
      receiptsKnex: eventsDb?.knex,
      workerId,
      maxConcurrentExports: config.maxConcurrentExports,
      exportStallTimeoutMs: config.exportStallTimeoutMs,
      selfErasureGraceMs: config.selfErasureGraceMs,
      artifacts: { cipher: new ArtifactCipher(artifactKey), ttlMs: config.artifacts.ttlMs },
      downstream:
        ev.expectedServices.length === 0
          ? undefined
          : {
              services: [...ev.expectedServices].sort(),
              source:
                exportKey === undefined
                  ? new UnaskedDownstream(
                      ev.natsUrl === undefined
                        ? 'NATS is not configured (LETHE_NATS_URL): the service was not asked'
                        : 'the server has no export signing key (LETHE_EXPORT_SIGNING_KEY_FILE): the service was not asked',
                    )
                  : new DownstreamExports({ connection: () => events?.connection, signingKey: exportKey.signingKey, timeoutMs: ev.downstreamExportTimeoutMs }),
            },
    });
    // This replica's heartbeat (its row goes when it stops), and the search for requests left
    // running by replicas that died.
    await workers
      .beat(db.knex, workerId)
      .catch((err: unknown) => logger.warn({ err: errorSummary(err) }, 'worker heartbeat failed; retrying on the next tick'));
    life.defer('worker row', () => workers.remove(db.knex, workerId).catch(() => undefined));
    if (ev.natsUrl === undefined) {
      logger.warn({ pendingEvents: await countPending(db.knex) }, 'no LETHE_NATS_URL: anonymization events wait in the outbox until NATS is configured');
    } else {
      const recordConfirmations: RecordConfirmations = (receipts) => engine.recordConfirmations(receipts);
      events = await life.start(
        'NATS events',
        new ServerEvents(
          outboxDb,
          {
            natsUrl: ev.natsUrl,
            tls: natsTls,
            stream: ev.stream,
            recordConfirmations,
            outboxRetentionMs: ev.outboxRetentionMs,
            changeValues: exportKey && { lookup: (id, service) => engine.pendingValues(id, service), signingKey: exportKey.signingKey },
          },
          logger,
        ),
      );
    }
    for (const task of backgroundTasks(engine, config, db, workerId, logger)) await life.start(task.name, task);
    const metrics =
      config.metricsListen === undefined
        ? undefined
        : new ServerMetrics(
            () => countPending(outboxDb),
            (now, soon) => ledger.countOpenByDue(outboxDb, now, soon),
          );
    // Derived from the artifact key, which every replica shares: a token works on any of them.
    const pageTokens = new PageTokens(artifactKey);
    const grpc = await life.open(
      'gRPC server',
      () =>
        startGrpcServer({
          engine,
          verify,
          logger,
          host: config.listen.host,
          port: config.listen.port,
          limits: config.grpc,
          pageTokens,
          metrics,
          credentials: tls,
          health: config.healthListen,
        }).catch((err: unknown) => {
          throw err instanceof ConfigError ? err : cannotListen(config.listen, '--listen', err);
        }),
      (g) => g.shutdown(graceMs),
    );
    if (tls !== undefined) {
      life.defer(
        'TLS handshake observer',
        observeHandshakeFailures(grpc.port, (reason, code) => {
          metrics?.tlsHandshakeFailed(reason);
          logHandshakeFailure(logger, reason, code);
        }),
      );
    }
    // Readiness (gRPC health and /readyz) follows the database; liveness does not.
    const t = config.database.kind === 'postgres' ? (config.database.timeouts ?? DEFAULT_DATABASE_TIMEOUTS) : undefined;
    const dbHealth =
      t === undefined
        ? undefined
        : await life.start(
            'database health',
            new DatabaseHealth((ms) => db.ping(ms), {
              intervalMs: t.healthIntervalMs,
              timeoutMs: t.healthTimeoutMs,
              logger,
              onChange: (ok) => grpc.setServing(ok),
            }),
          );
    // The metrics listener also answers /healthz and /readyz (ready until shutdown begins).
    const metricsListen = config.metricsListen;
    const http =
      metrics === undefined || metricsListen === undefined
        ? undefined
        : await life.open(
            'metrics listener',
            () =>
              startHealthServer(metricsListen, () => serving && (dbHealth?.isServing() ?? true), { metrics: metrics.registry }).catch((err: unknown) => {
                throw cannotListen(metricsListen, 'LETHE_METRICS_LISTEN', err);
              }),
            (h) => h.close(),
          );
    const httpConfig = config.http;
    const api =
      httpConfig === undefined
        ? undefined
        : await life.open(
            'HTTP API',
            () =>
              startHttpServer({
                engine,
                verify,
                pageTokens,
                logger,
                host: httpConfig.listen.host,
                port: httpConfig.listen.port,
                corsOrigins: httpConfig.corsOrigins,
                rateLimitPerMinute: httpConfig.rateLimitPerMinute,
                version: LETHE_VERSION,
                tls,
              }).catch((err: unknown) => {
                throw cannotListen(httpConfig.listen, '--http-listen', err);
              }),
            (a) => a.close(),
          );
    logger.info(
      {
        listen: `${config.listen.host}:${grpc.port}`,
        http:
          api === undefined
            ? 'off (--http-listen or LETHE_HTTP_LISTEN)'
            : `${tls === undefined ? 'http' : 'https'}://${httpConfig?.listen.host ?? ''}:${api.port}/api/privacy`,
        database: db.description,
        dataMap: config.dataMapPath,
        auth: config.auth.mode === 'local' ? `local signing key in ${config.dataDir} (mint tokens with: lethe token --as <user-id>)` : config.auth.mode,
        artifactKeyId: artifactKeyId(artifactKey),
        downstreamExports:
          ev.expectedServices.length === 0
            ? 'none (LETHE_DOWNSTREAM_SERVICES)'
            : exportKey === undefined
              ? 'not asked: set LETHE_NATS_URL and LETHE_EXPORT_SIGNING_KEY_FILE'
              : { services: ev.expectedServices, ...(exportKey.publicKeyFile === undefined ? {} : { sidecarVerifyKey: exportKey.publicKeyFile }) },
        metrics: http === undefined ? 'off (set LETHE_METRICS_LISTEN)' : `http://${http.address.host}:${http.address.port}/metrics`,
        tls:
          tls === undefined
            ? 'off: plaintext (set --tls-cert and --tls-key)'
            : { mutual: tls.mutualTls, certificate: tls.certificate, reloadInterval: `${config.tls?.reloadIntervalMs ?? 0}ms` },
        ...(grpc.healthPort === undefined ? {} : { healthProbes: `${config.healthListen?.host ?? ''}:${grpc.healthPort} (plaintext, grpc.health.v1 only)` }),
      },
      'lethe PrivacyService listening',
    );
    return {
      port: grpc.port,
      healthPort: grpc.healthPort,
      tls,
      metricsPort: http?.address.port,
      httpPort: api?.port,
      stop(grace = 10_000) {
        // Stops in reverse order of start: the HTTP API, the listeners, gRPC (finishing calls for
        // up to `grace`), the background work, the pools, the data directory lock.
        serving = false;
        graceMs = grace;
        return life.stop();
      },
    };
  });
}

/** The periodic work every replica does beside serving. */
function backgroundTasks(engine: PrivacyEngine, config: ServerConfig, db: Database, workerId: string, logger: Logger): PeriodicTask[] {
  return [
    new PeriodicTask(
      'expiring export artifacts',
      async () => {
        const expired = await engine.expireArtifacts();
        if (expired > 0) logger.info({ expired }, 'export artifacts expired');
      },
      config.artifacts.sweepIntervalMs,
      logger,
    ),
    new PeriodicTask('worker heartbeat', () => workers.beat(db.knex, workerId), HEARTBEAT_MS, logger),
    new PeriodicTask(
      'recovering interrupted requests',
      async () => void (await engine.recoverInterrupted({ staleMs: WORKER_STALE_MS, othersAreDead: config.database.kind === 'pglite' })),
      RECOVERY_MS,
      logger,
      { runAtStart: true },
    ),
    // Scheduled erasures (a person's own, after its grace period), carried out by any replica.
    new PeriodicTask(
      'carrying out scheduled erasures',
      async () => {
        const ran = await engine.runScheduled();
        if (ran > 0) logger.info({ ran }, 'scheduled erasures carried out');
      },
      SCHEDULER_MS,
      logger,
      { runAtStart: true },
    ),
  ];
}

function cannotListen(listen: { readonly host: string; readonly port: number }, setting: string, cause: unknown): ConfigError {
  return new ConfigError(`cannot listen on ${listen.host}:${listen.port} (in use, or not an address of this machine)`, setting, { cause });
}

/** The key that signs export requests to the sidecars, when downstream services are asked. */
async function downstreamExportKey(config: ServerConfig): Promise<{ signingKey: CryptoKey; publicKeyFile?: string } | undefined> {
  const ev = config.events;
  if (ev.expectedServices.length === 0 || ev.natsUrl === undefined) return undefined;
  if (ev.exportSigningKeyFile !== undefined) return { signingKey: await loadExportSigningKey(ev.exportSigningKeyFile, 'LETHE_EXPORT_SIGNING_KEY_FILE') };
  return config.auth.mode === 'local' ? ensureLocalExportKey(config.dataDir) : undefined;
}

async function resolveHashKey(config: ServerConfig): Promise<Buffer> {
  if (config.hashKey !== undefined) return config.hashKey;
  if (config.auth.mode !== 'local') {
    throw new ConfigError('the data map uses the hash action: set LETHE_HASH_KEY (openssl rand -hex 32)', 'LETHE_HASH_KEY');
  }
  return keyInDataDir(config.dataDir, 'hash-key');
}

/** A 32-byte key kept as hex in the data directory (mode 0600), created on first use. */
async function keyInDataDir(dataDir: string, name: string): Promise<Buffer> {
  const path = join(dataDir, name);
  try {
    return await readKeyFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await writeFile(path, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
    // Another process created it first: use theirs.
    if (err.code !== 'EEXIST') throw err;
  });
  return readKeyFile(path);
}

async function readKeyFile(path: string): Promise<Buffer> {
  const text = (await readFile(path, 'utf8')).trim();
  if (!/^(?:[0-9a-fA-F]{2}){32}$/.test(text)) throw new ConfigError('is not a 32-byte key written as 64 hex digits', path);
  return Buffer.from(text, 'hex');
}
