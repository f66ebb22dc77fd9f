import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { createVerifier } from '../auth/verifier.js';
import type { ServerConfig } from '../config/config.js';
import { ConfigError, UnavailableError } from '../errors.js';
import { loadDataMap } from '../privacy/data-map.js';
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

export interface RunningServer {
  readonly port: number;
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
  const verify = await createVerifier(config.auth, config.dataDir, config.platformPrincipals, { serviceAccounts: config.serviceAccounts, logger });

  const unlock = config.database.kind === 'pglite' ? await lockDataDir(config.dataDir) : async () => undefined;
  const db = await openDatabase(config.database);
  let eventsDb: Database | undefined;
  try {
    await migrateLethe(db.knex).catch((err: unknown) => {
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
      ev.natsUrl === undefined ? undefined : new ServerEvents((eventsDb ?? db).knex, { natsUrl: ev.natsUrl, stream: ev.stream, expectedServices: ev.expectedServices }, logger);
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
    });
    if (events === undefined) {
      logger.warn({ pendingEvents: await countPending(db.knex) }, 'no LETHE_NATS_URL: anonymization events wait in the outbox until NATS is configured');
    } else {
      events.start();
    }
    const grpc = await startGrpcServer({ engine, verify, logger, host: config.listen.host, port: config.listen.port }).catch(async (err: unknown) => {
      await events?.stop();
      throw new ConfigError(`cannot listen on ${config.listen.host}:${config.listen.port} (in use, or not an address of this machine)`, '--listen', { cause: err });
    });
    logger.info(
      {
        listen: `${config.listen.host}:${grpc.port}`,
        database: db.description,
        dataMap: config.dataMapPath,
        auth: config.auth.mode === 'local' ? `local signing key in ${config.dataDir} (mint tokens with: lethe token --as <user-id>)` : config.auth.mode,
      },
      'lethe PrivacyService listening',
    );
    return {
      port: grpc.port,
      async stop(graceMs = 10_000) {
        await grpc.shutdown(graceMs);
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
  const path = join(config.dataDir, 'hash-key');
  try {
    return Buffer.from((await readFile(path, 'utf8')).trim(), 'hex');
  } catch {
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
    const key = randomBytes(32);
    await writeFile(path, `${key.toString('hex')}\n`, { mode: 0o600 });
    return key;
  }
}
