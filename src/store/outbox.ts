import type { Knex } from 'knex';

/** The transactional outbox: events written with the change that caused them, published later. */

export interface OutboxEvent {
  readonly id: string;
  readonly subject: string;
  readonly payload: string;
}

const TABLE = 'lethe_outbox';

export async function enqueueEvent(trx: Knex.Transaction, event: OutboxEvent, now: Date): Promise<void> {
  await trx(TABLE).insert({ id: event.id, subject: event.subject, payload: event.payload, created_at: now });
}

/**
 * Publishes up to `limit` pending events, oldest first, marking each sent only after `publish`
 * resolved for it (the PubAck). Rows are locked with SKIP LOCKED, so several replicas never
 * publish the same row at once; a failure stops the batch, keeps what was sent, and is rethrown.
 */
export async function relayPending(knex: Knex, limit: number, publish: (e: OutboxEvent) => Promise<void>): Promise<number> {
  let failure: unknown;
  let sent = 0;
  await knex.transaction(async (trx) => {
    const rows = (await trx(TABLE).select('id', 'subject', 'payload', 'attempts').whereNull('sent_at').orderBy('created_at').limit(limit).forUpdate().skipLocked()) as Array<
      OutboxEvent & { attempts: number }
    >;
    for (const row of rows) {
      try {
        await publish(row);
      } catch (err) {
        failure = err;
        await trx(TABLE).where({ id: row.id }).update({ attempts: row.attempts + 1 });
        break;
      }
      await trx(TABLE).where({ id: row.id }).update({ sent_at: new Date(), attempts: row.attempts + 1 });
      sent += 1;
    }
  });
  if (failure !== undefined) throw failure;
  return sent;
}

export async function countPending(knex: Knex): Promise<number> {
  const rows = (await knex(TABLE).whereNull('sent_at').count('* as n')) as Array<{ n: number | string }>;
  return Number(rows[0]?.n ?? 0);
}
