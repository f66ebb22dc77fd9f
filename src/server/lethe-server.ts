import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { createVerifier } from '../auth/verifier.js';
import type { ServerConfig } from '../config/config.js';
import { ConfigError, UnavailableError } from '../errors.js';
import { loadDataMap } from '../privacy/data-map.js';
import { ArtifactCipher, artifactKeyId } from '../privacy/artifact-cipher.js';
import { ArtifactSweeper } from '../privacy/artifact-sweeper.js';
import { PrivacyEngine } from '../privacy/engine.js';
import { usesHash } from '../privacy/forget.js';
import { checkDataMapAgainstDatabase } from '../privacy/schema-check.js';
import { type Database, openDatabase } from '../store/database.js';
import { lockDataDir } from '../store/data-dir-lock.js';
import { translateDatabaseError } from '../store/errors.js';
import { loadDemoData } from '../store/demo-data.js';
import { migrateIdentitySchema, migrateLethe } from '../store/migrations.js';
import { startGrpcServer } from './grpc-server.js';
import { ServerEvents } from '../events/server-events.js';
import { countPending } from '../store/outbox.js';
import { type HealthServer, startHealthServer } from '../health-server.js';
import { ServerMetrics } from '../metrics/server-metrics.js';
import { natsTlsOptions } from '../tls/client-credentials.js';
import { describeTlsFailure } from '../tls/tls-errors.js';
import { ReloadingServerCredentials, logHandshakeFailure, observeHandshakeFailures } from '../tls/server-credentials.js';

export interface RunningServer {
  readonly port: number;
  /** The plaintext health-only port (LETHE_GRPC_HEALTH_LISTEN); undefined without it. */
  readonly healthPort: number | undefined;
  /** The serving TLS credentials; undefined for plaintext. */
  readonly tls: ReloadingServerCredentials | undefined;
  /** The bound port of `GET /metrics`; undefined without LETHE_METRICS_LISTEN. */
  readonly metricsPort: number | undefined;
  /** The ordered shutdown: health NOT_SERVING, stop accepting, finish or cancel calls, close the pool. */
  stop(graceMs?: number): Promise<void>;
}

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
  const verify = await createVerifier(config.auth, config.dataDir, config.platformPrincipals, { serviceAccounts: config.serviceAccounts, logger });

  const unlock = config.database.kind === 'pglite' ? await lockDataDir(config.dataDir) : async () => undefined;
  const db = await openDatabase(config.database);
  let eventsDb: Database | undefined;
  try {
    await migrateLethe(db.knex).catch((err: unknown) => {
      const tlsFailure = describeTlsFailure(err);
      if (tlsFailure !== undefined) throw new ConfigError(`TLS to the database (${db.description}) failed: ${tlsFailure}; check sslrootcert`, 'DATABASE_URL', { cause: err });
      const e = translateDatabaseError(err);
      if (e instanceof UnavailableError) {
        throw new UnavailableError(`cannot reach the database (${db.description}); check DATABASE_URL and that the server is up`, { cause: err });
      }
      throw e;
    });
    if (config.migrateIdentitySchema) await migrateIdentitySchema(db.knex);
    if (config.demo) logger.info({ demo: await loadDemoData(db.knex) }, 'demo data');
    const columnTypes = await checkDataMapAgainstDatabase(db.knex, dataMap, config.dataMapPath);
    const ev = config.events;
    // The relay and the receipt consumer get a small pool of their own, so that a queue of
    // ForgetUser calls never starves them (PGlite has a single connection to share).
    eventsDb = ev.natsUrl !== undefined && config.database.kind === 'postgres' ? await openDatabase({ ...config.database, poolMax: 4 }) : undefined;
    const events =
      ev.natsUrl === undefined ? undefined : new ServerEvents((eventsDb ?? db).knex, { natsUrl: ev.natsUrl, tls: natsTls, stream: ev.stream, expectedServices: ev.expectedServices }, logger);
    const engine = new PrivacyEngine({
      knex: db.knex,
      dataMap,
      columnTypes,
      hashKey,
      logger,
      eventSource: ev.source,
      expectedServices: ev.expectedServices,
      confirmationTimeoutMs: ev.confirmationTimeoutMs,
      onEventEnqueued: () => events?.notify(),
      artifacts: { cipher: new ArtifactCipher(artifactKey), ttlMs: config.artifacts.ttlMs },
    });
    const sweeper = new ArtifactSweeper(() => engine.expireArtifacts(), config.artifacts.sweepIntervalMs, logger);
    if (events === undefined) {
      logger.warn({ pendingEvents: await countPending(db.knex) }, 'no LETHE_NATS_URL: anonymization events wait in the outbox until NATS is configured');
    } else {
      events.start();
    }
    sweeper.start();
    const outboxDb = (eventsDb ?? db).knex;
    const metrics = config.metricsListen === undefined ? undefined : new ServerMetrics(() => countPending(outboxDb));
    const grpc = await startGrpcServer({ engine, verify, logger, host: config.listen.host, port: config.listen.port, metrics, credentials: tls, health: config.healthListen }).catch(async (err: unknown) => {
      tls?.close();
      await sweeper.stop();
      await events?.stop();
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(`cannot listen on ${config.listen.host}:${config.listen.port} (in use, or not an address of this machine)`, '--listen', { cause: err });
    });
    const stopObserving =
      tls === undefined
        ? () => undefined
        : observeHandshakeFailures(grpc.port, (reason, code) => {
            metrics?.tlsHandshakeFailed(reason);
            logHandshakeFailure(logger, reason, code);
          });
    // The metrics listener also answers /healthz and /readyz (ready until shutdown begins).
    let serving = true;
    let http: HealthServer | undefined;
    const metricsListen = config.metricsListen;
    if (metrics !== undefined && metricsListen !== undefined) {
      http = await startHealthServer(metricsListen, () => serving, { metrics: metrics.registry }).catch(async (err: unknown) => {
        await grpc.shutdown(0);
        await sweeper.stop();
        await events?.stop();
        throw new ConfigError(`cannot listen on ${metricsListen.host}:${metricsListen.port} (in use, or not an address of this machine)`, 'LETHE_METRICS_LISTEN', { cause: err });
      });
    }
    logger.info(
      {
        listen: `${config.listen.host}:${grpc.port}`,
        database: db.description,
        dataMap: config.dataMapPath,
        auth: config.auth.mode === 'local' ? `local signing key in ${config.dataDir} (mint tokens with: lethe token --as <user-id>)` : config.auth.mode,
        artifactKeyId: artifactKeyId(artifactKey),
        metrics: http === undefined ? 'off (set LETHE_METRICS_LISTEN)' : `http://${http.address.host}:${http.address.port}/metrics`,
        tls: tls === undefined ? 'off: plaintext (set --tls-cert and --tls-key)' : { mutual: tls.mutualTls, certificate: tls.certificate, reloadInterval: `${config.tls?.reloadIntervalMs ?? 0}ms` },
        ...(grpc.healthPort === undefined ? {} : { healthProbes: `${config.healthListen?.host ?? ''}:${grpc.healthPort} (plaintext, grpc.health.v1 only)` }),
      },
      'lethe PrivacyService listening',
    );
    return {
      port: grpc.port,
      healthPort: grpc.healthPort,
      tls,
      metricsPort: http?.address.port,
      async stop(graceMs = 10_000) {
        serving = false;
        await grpc.shutdown(graceMs);
        stopObserving();
        tls?.close();
        await http?.close();
        await sweeper.stop();
        await events?.stop();
        await eventsDb?.close();
        await db.close();
        await unlock();
      },
    };
  } catch (err) {
    await eventsDb?.close();
    await db.close();
    await unlock();
    throw err;
  }
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
