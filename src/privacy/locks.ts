import type { Knex } from 'knex';

/** A transaction-scoped advisory lock on a string key: held until the transaction ends. */
export async function lockKey(trx: Knex.Transaction, key: string): Promise<void> {
  await trx.raw('SELECT pg_advisory_xact_lock(hashtextextended(?, 0))', [key]);
}

export const subjectLockKey = (subjectId: string): string => `lethe:subject:${subjectId}`;
