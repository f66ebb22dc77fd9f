import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
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

/** The shared form of lockKey: many holders at once, none while lockKey holds it. */
export async function lockKeyShared(trx: Knex.Transaction, key: string): Promise<void> {
  await trx.raw(`SELECT pg_advisory_xact_lock_shared(${LOCK_ID})`, [key]);
}

/**
 * A lock on a string key that holds across server replicas: on PostgreSQL an advisory lock
 * taken in a transaction of its own, held while `fn` runs and released when that transaction
 * ends (also when the process dies: the connection goes, so does the lock). `fn` receives that
 * transaction: what it writes there commits only if `fn` succeeds. Embedded PGlite has one
 * process and one connection, so an in-process lock is enough there and `fn` gets no
 * transaction (opening one would hold the only connection).
 *
 * Waiting polls, holding no connection between attempts, and stops when `signal` aborts: a
 * caller that gave up does not keep a connection while an earlier holder works for minutes.
 */
export async function withAdvisoryLock<T>(
  knex: Knex,
  key: string,
  fn: (lockTrx: Knex.Transaction | undefined) => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  return withLocalLock(knex, key, signal, async () => {
    if (isEmbedded(knex)) return fn(undefined);
    const trx = await lockInTransaction(knex, key, signal);
    try {
      const result = await fn(trx);
      await trx.commit();
      return result;
    } finally {
      if (!trx.isCompleted()) await trx.rollback().catch(() => undefined);
    }
  });
}

/** Embedded PGlite: a single connection in a single process. */
function isEmbedded(knex: Knex): boolean {
  return knex.client instanceof ClientPgLite;
}

async function lockInTransaction(knex: Knex, key: string, signal: AbortSignal | undefined): Promise<Knex.Transaction> {
  for (let attempt = 0; ; attempt++) {
    const trx = await knex.transaction();
    try {
      // The same lock as privacy/locks.ts lockKey, so that both exclude each other.
      const { rows } = (await trx.raw(`SELECT pg_try_advisory_xact_lock(${LOCK_ID}) AS locked`, [key])) as { rows: Array<{ locked: boolean }> };
      if (rows[0]?.locked === true) return trx;
    } catch (err) {
      await trx.rollback().catch(() => undefined);
      throw err;
    }
    await trx.rollback();
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
