import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import type pg from 'pg';
import { exponentialDelay, sleep } from '../runtime/backoff.js';
import { CancelledError } from '../errors.js';

/** A string key as PostgreSQL's 64-bit advisory lock id: the one mapping, so every lock on a key is the same lock. */
const LOCK_ID = 'hashtextextended(?, 0)';

/** A transaction-scoped advisory lock on a string key, waited for in the database; held until the transaction ends. */
export async function lockKey(trx: Knex.Transaction, key: string): Promise<void> {
  await trx.raw(`SELECT pg_advisory_xact_lock(${LOCK_ID})`, [key]);
}

/** lockKey for several keys as one statement (to send with others), taken one after the other in the order given. */
export function lockKeysStatement(keys: readonly string[]): { sql: string; bindings: string[] } {
  return { sql: `SELECT ${keys.map((_, i) => `pg_advisory_xact_lock(${LOCK_ID}) AS "l${i}"`).join(', ')}`, bindings: [...keys] };
}

/**
 * What holds a lock of withAdvisoryLock on PostgreSQL: a pooled connection with session-level
 * advisory locks, outside any transaction between the caller's short ones (so never idle in a
 * transaction, however long the caller works while holding it).
 */
export interface LockConnection {
  /** Runs `fn` in a transaction of its own on the lock's connection, committed when `fn` succeeds. */
  transaction<T>(fn: (trx: Knex.Transaction) => Promise<T>): Promise<T>;
  /** Also holds the shared form of `key`'s lock (many holders at once, none while lockKey holds it), waited for, until the locks are released. */
  shareLock(key: string): Promise<void>;
}

/**
 * A lock on a string key that holds across server replicas: on PostgreSQL a session-level
 * advisory lock on a pooled connection of its own, held while `fn` runs and released when it
 * returns or throws (also when the process dies: the connection goes, so does the lock). It is
 * the same lock as lockKey's, so both exclude each other. `fn` receives the connection
 * (LockConnection), which opens no transaction unless `fn` asks for one. Embedded PGlite has one
 * process and one connection, so an in-process lock is enough there and `fn` gets undefined.
 *
 * Waiting polls, holding no connection between attempts, and stops when `signal` aborts: a
 * caller that gave up does not keep a connection while an earlier holder works for minutes.
 */
export async function withAdvisoryLock<T>(knex: Knex, key: string, fn: (lock: LockConnection | undefined) => Promise<T>, signal?: AbortSignal): Promise<T> {
  return withLocalLock(knex, key, signal, async () => {
    if (isEmbedded(knex)) return fn(undefined);
    const pool = poolOf(knex);
    const conn = await lockOnConnection(knex, key, signal);
    try {
      return await fn({
        transaction: (body) => knex.transaction(body, { connection: conn }),
        shareLock: async (other) => {
          await knex.raw(`SELECT pg_advisory_lock_shared(${LOCK_ID})`, [other]).connection(conn);
        },
      });
    } finally {
      // The connection goes back to the pool holding no lock, or not at all.
      await knex
        .raw('SELECT pg_advisory_unlock_all()')
        .connection(conn)
        .catch(() => conn.end().catch(() => undefined));
      await pool.releaseConnection(conn);
    }
  });
}

/** What withAdvisoryLock uses of knex's client: its pool (knex types the client as any). */
interface Pool {
  acquireConnection(): Promise<pg.Client>;
  releaseConnection(conn: pg.Client): Promise<void>;
}
const poolOf = (knex: Knex): Pool => knex.client as Pool;

/** Embedded PGlite: a single connection in a single process. */
function isEmbedded(knex: Knex): boolean {
  return knex.client instanceof ClientPgLite;
}

async function lockOnConnection(knex: Knex, key: string, signal: AbortSignal | undefined): Promise<pg.Client> {
  const pool = poolOf(knex);
  for (let attempt = 0; ; attempt++) {
    const conn = await pool.acquireConnection();
    try {
      const { rows } = (await knex.raw(`SELECT pg_try_advisory_lock(${LOCK_ID}) AS locked`, [key]).connection(conn)) as { rows: Array<{ locked: boolean }> };
      if (rows[0]?.locked === true) return conn;
    } catch (err) {
      // Whether the lock was taken is unknown: the connection is not reused.
      await conn.end().catch(() => undefined);
      await pool.releaseConnection(conn);
      throw err;
    }
    await pool.releaseConnection(conn);
    await sleep(exponentialDelay(attempt, 20, 1_000), signal);
    throwIfAborted(signal);
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new CancelledError('The call was cancelled while it waited for an earlier call with the same key');
}

// Per database handle, so that two handles in one process behave as two replicas would.
const tailsOf = new WeakMap<Knex, Map<string, Promise<void>>>();

/** Runs `fn` after every earlier holder of `key` on this database handle has finished. */
async function withLocalLock<T>(knex: Knex, key: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  const tails = tailsOf.get(knex) ?? new Map<string, Promise<void>>();
  tailsOf.set(knex, tails);
  const previous = tails.get(key) ?? Promise.resolve();
  let release: () => void = () => undefined;
  const mine = new Promise<void>((resolve) => (release = resolve));
  const tail = previous.then(() => mine);
  tails.set(key, tail);
  try {
    await waitOrAbort(previous, signal);
    throwIfAborted(signal);
    return await fn();
  } finally {
    // Given up or done: whoever waits behind us still waits for `previous` first.
    release();
    if (tails.get(key) === tail) tails.delete(key);
  }
}

function waitOrAbort(p: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return p;
  return new Promise<void>((resolve) => {
    const done = () => {
      signal.removeEventListener('abort', done);
      resolve();
    };
    if (signal.aborted) return resolve();
    signal.addEventListener('abort', done, { once: true });
    void p.then(done);
  });
}
