import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import { lockKey } from '../privacy/locks.js';

/**
 * A lock on a string key that holds across server replicas: on PostgreSQL an advisory lock
 * taken in a transaction of its own, held while `fn` runs and released when that transaction
 * ends (also when the process dies: the connection goes, so does the lock). `fn` receives that
 * transaction: what it writes there commits only if `fn` succeeds. Embedded PGlite has one
 * process and one connection, so an in-process lock is enough there and `fn` gets no
 * transaction (opening one would hold the only connection).
 */
export async function withAdvisoryLock<T>(knex: Knex, key: string, fn: (lockTrx: Knex.Transaction | undefined) => Promise<T>): Promise<T> {
  return withLocalLock(knex, key, async () => {
    if (isEmbedded(knex)) return fn(undefined);
    const trx = await knex.transaction();
    try {
      await lockKey(trx, key);
      const result = await fn(trx);
      await trx.commit();
      return result;
    } finally {
      if (!trx.isCompleted()) await trx.rollback().catch(() => undefined);
    }
  });
}

/** Embedded PGlite: a single connection in a single process. */
export function isEmbedded(knex: Knex): boolean {
  return knex.client instanceof ClientPgLite;
}

// Per database handle, so that two handles in one process behave as two replicas would.
const tailsOf = new WeakMap<Knex, Map<string, Promise<void>>>();

/** Runs `fn` after every earlier holder of `key` on this database handle has finished. */
async function withLocalLock<T>(knex: Knex, key: string, fn: () => Promise<T>): Promise<T> {
  const tails = tailsOf.get(knex) ?? new Map<string, Promise<void>>();
  tailsOf.set(knex, tails);
  const previous = tails.get(key) ?? Promise.resolve();
  let release: () => void = () => undefined;
  const mine = new Promise<void>((resolve) => (release = resolve));
  const tail = previous.then(() => mine);
  tails.set(key, tail);
  await previous;
  try {
    return await fn();
  } finally {
    release();
    if (tails.get(key) === tail) tails.delete(key);
  }
}
