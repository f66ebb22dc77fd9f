import { mkdir } from 'node:fs/promises';
import knexPkg from 'knex';
import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import pg from 'pg';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';

// knex's ESM build exposes the factory on the default export only.
const { knex } = knexPkg;

// Return bigint (COUNT(*) and bigserial) as a JS number, as PGlite does: counts here stay far
// below 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number.parseInt(v, 10));

/** PostgreSQL only: PGlite runs in this process and cannot stall apart from it. */
export interface DatabaseTimeouts {
  /** PostgreSQL's statement_timeout, lock_timeout and idle_in_transaction_session_timeout, set on every connection. */
  readonly statementTimeoutMs: number;
  readonly lockTimeoutMs: number;
  readonly idleInTransactionTimeoutMs: number;
  /** Client side: a query without an answer for this long fails and its connection is closed (a stalled server or network). */
  readonly queryTimeoutMs: number;
  /** Opening a connection (TCP and start-up). */
  readonly connectTimeoutMs: number;
  /** Waiting for a free connection of the pool. */
  readonly acquireTimeoutMs: number;
  /** The health probe: `SELECT 1` this often, failing after the timeout. */
  readonly healthIntervalMs: number;
  readonly healthTimeoutMs: number;
}

/** The defaults (LETHE_DB_* overrides them): a stalled database answers UNAVAILABLE within 25 s, health within 8 s. */
export const DEFAULT_DATABASE_TIMEOUTS: DatabaseTimeouts = Object.freeze({
  statementTimeoutMs: 20_000,
  lockTimeoutMs: 10_000,
  idleInTransactionTimeoutMs: 300_000,
  queryTimeoutMs: 25_000,
  connectTimeoutMs: 5_000,
  acquireTimeoutMs: 10_000,
  healthIntervalMs: 5_000,
  healthTimeoutMs: 3_000,
});

export type DatabaseTarget =
  { kind: 'postgres'; url: string; poolMax?: number; timeouts?: DatabaseTimeouts } | { kind: 'pglite'; dataDir?: string | undefined };

export interface Database {
  readonly knex: Knex;
  readonly kind: DatabaseTarget['kind'];
  /** Where the data lives, without credentials (safe to log). */
  readonly description: string;
  /**
   * `SELECT 1` on a connection of its own (so a busy pool does not fail it), within `timeoutMs`;
   * rejects when the database does not answer. Embedded PGlite lives in this process: it resolves.
   */
  ping(timeoutMs: number): Promise<void>;
  close(): Promise<void>;
}

/** Without a logger, knex's own messages are dropped (tests); with one, they go through it as JSON. */
export async function openDatabase(target: DatabaseTarget, logger?: Logger): Promise<Database> {
  const log = knexLog(logger);
  if (target.kind === 'postgres') {
    const t = target.timeouts ?? DEFAULT_DATABASE_TIMEOUTS;
    const k = knex({
      client: 'pg',
      connection: pgConnection(target.url, t),
      pool: {
        min: 0,
        max: target.poolMax ?? 10,
        // A dead or stalled database must surface as UNAVAILABLE quickly, not hang a call.
        acquireTimeoutMillis: t.acquireTimeoutMs,
        createTimeoutMillis: t.connectTimeoutMs,
        idleTimeoutMillis: 30_000,
        afterCreate: (conn: pg.Client, done: (err: Error | null, conn: pg.Client) => void) => {
          closeOnReadTimeout(conn);
          conn.on('error', (err) => logger?.warn({ err: errorSummary(err) }, 'database connection error'));
          done(null, conn);
        },
      },
      acquireConnectionTimeout: t.acquireTimeoutMs,
      log,
    });
    const pinger = new Pinger(target.url, t, logger);
    return {
      knex: k,
      kind: 'postgres',
      description: describePostgresUrl(target.url),
      ping: (timeoutMs) => pinger.ping(timeoutMs),
      close: async () => {
        pinger.close();
        await k.destroy();
      },
    };
  }
  if (target.dataDir !== undefined) await mkdir(target.dataDir, { recursive: true });
  const k = knex({
    client: ClientPgLite,
    dialect: 'postgres',
    connection: target.dataDir === undefined ? {} : { filename: target.dataDir },
    // PGlite has a single connection; a query waiting behind a long transaction fails after this.
    acquireConnectionTimeout: 60_000,
    log,
  });
  return {
    knex: k,
    kind: 'pglite',
    description: target.dataDir === undefined ? 'embedded PGlite (in memory)' : `embedded PGlite in ${target.dataDir}`,
    ping: async () => undefined,
    close: () => k.destroy(),
  };
}

/** postgres://user:secret@host:5432/db → postgresql://host:5432/db */
export function describePostgresUrl(url: string): string {
  try {
    const u = new URL(url);
    return `postgresql://${u.host}${u.pathname}`;
  } catch {
    return 'postgresql (unparseable URL)';
  }
}

function pgConnection(url: string, t: DatabaseTimeouts) {
  return {
    connectionString: url,
    application_name: 'lethe',
    // Set at connection start-up, no extra round trip: the server ends what runs too long.
    options: `-c statement_timeout=${t.statementTimeoutMs} -c lock_timeout=${t.lockTimeoutMs} -c idle_in_transaction_session_timeout=${t.idleInTransactionTimeoutMs}`,
    connectionTimeoutMillis: t.connectTimeoutMs,
    query_timeout: t.queryTimeoutMs,
    keepAlive: true,
  };
}

/** One connection kept for health probes, opened again after any failure. */
class Pinger {
  private client: pg.Client | undefined;

  constructor(
    private readonly url: string,
    private readonly timeouts: DatabaseTimeouts,
    private readonly logger: Logger | undefined,
  ) {}

  async ping(timeoutMs: number): Promise<void> {
    let client = this.client;
    try {
      if (client === undefined) {
        client = new pg.Client({ ...pgConnection(this.url, this.timeouts), connectionTimeoutMillis: timeoutMs, query_timeout: timeoutMs });
        client.on('error', (err) => this.logger?.debug({ err: errorSummary(err) }, 'health probe connection error'));
        this.client = client;
        await client.connect();
      }
      await client.query('SELECT 1');
    } catch (err) {
      this.close();
      throw err;
    }
  }

  close(): void {
    // Not end(): a server that does not answer would never acknowledge it.
    (this.client as unknown as { connection?: { stream?: { destroy(): void } } } | undefined)?.connection?.stream?.destroy();
    this.client = undefined;
  }
}

/** The text pg gives a query whose answer did not come within query_timeout. */
const QUERY_READ_TIMEOUT = 'Query read timeout';

/**
 * pg fails a query that got no answer within query_timeout but keeps the connection, whose
 * next query (the transaction's ROLLBACK) would then wait behind the lost answer as long
 * again. Closing the socket fails it at once, and knex discards the connection.
 */
function closeOnReadTimeout(conn: pg.Client): void {
  const query = conn.query.bind(conn) as (...args: unknown[]) => unknown;
  (conn as { query: unknown }).query = (...args: unknown[]) => {
    const last = args.at(-1);
    if (typeof last === 'function') {
      args[args.length - 1] = (err: unknown, res: unknown) => {
        if (err instanceof Error && err.message === QUERY_READ_TIMEOUT)
          (conn as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
        (last as (e: unknown, r: unknown) => void)(err, res);
      };
    }
    return query(...args);
  };
}

/**
 * knex's own warnings and errors (pool trouble, deprecations) as JSON log lines. Their texts are
 * knex's, about connections and queries, never bound values; they are capped all the same.
 */
function knexLog(logger: Logger | undefined): Knex.Logger {
  const line = (level: 'warn' | 'error' | 'debug') => (message: unknown) =>
    logger?.[level]({ source: 'knex' }, String(message instanceof Error ? message.message : message).slice(0, 500));
  return {
    warn: line('warn'),
    error: line('error'),
    debug: line('debug'),
    deprecate: (method, alternative) => logger?.warn({ source: 'knex', method, alternative }, 'deprecated knex method'),
  };
}
