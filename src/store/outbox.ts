import type { Knex } from 'knex';

/** The transactional outbox: events written with the change that caused them, published later. */

export interface OutboxEvent {
  readonly id: string;
  readonly subject: string;
  readonly payload: string;
}

const TABLE = 'lethe_outbox';

/** An event enqueued as part of a larger statement (the forget's): an INSERT with `?` for its values. */
export function enqueueEventPart(event: OutboxEvent, now: Date): { table: string; sql: string; bindings: Knex.RawBinding[] } {
  return {
    table: TABLE,
    sql: `INSERT INTO "${TABLE}" ("id", "subject", "payload", "created_at") VALUES (?, ?, ?, ?)`,
    bindings: [event.id, event.subject, event.payload, now],
  };
}

/**
 * Publishes up to `limit` pending events, oldest first, all at once (JetStream acknowledges
 * each), then marks those acknowledged as sent in one statement. Rows are locked with SKIP
 * LOCKED, so several replicas never publish the same row at once. Events are independent, so
 * their order on the stream does not matter. A failure leaves its row pending and is rethrown
 * once the rest are marked.
 */
export async function relayPending(knex: Knex, limit: number, publish: (e: OutboxEvent) => Promise<void>): Promise<number> {
  let failure: unknown;
  let sent = 0;
  await knex.transaction(async (trx) => {
    const rows = (await trx(TABLE)
      .select('id', 'subject', 'payload')
      .whereNull('sent_at')
      .orderBy('created_at')
      .limit(limit)
      .forUpdate()
      .skipLocked()) as OutboxEvent[];
    if (rows.length === 0) return;
    const results = await Promise.allSettled(rows.map((row) => publish(row)));
    const ok = rows.filter((_, i) => results[i]?.status === 'fulfilled').map((r) => r.id);
    failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason;
    const ids = rows.map((r) => r.id);
    await trx(TABLE).whereIn('id', ids).increment('attempts', 1);
    if (ok.length > 0) await trx(TABLE).whereIn('id', ok).update({ sent_at: new Date() });
    sent = ok.length;
  });
  if (failure !== undefined) throw failure;
  return sent;
}

/**
 * Deletes up to `limit` events published before `before`: their only purpose was to reach NATS,
 * and each holds a subject id. Pending rows are never touched. Returns how many went.
 */
export async function deletePublished(knex: Knex, before: Date, limit: number): Promise<number> {
  const ids = knex(TABLE).select('id').whereNotNull('sent_at').andWhere('sent_at', '<', before).orderBy('sent_at').limit(limit);
  const deleted = await knex(TABLE).whereIn('id', ids).delete();
  return typeof deleted === 'number' ? deleted : Number((deleted as { affectedRows?: number }).affectedRows ?? 0);
}

export async function countPending(knex: Knex): Promise<number> {
  const rows = (await knex(TABLE).whereNull('sent_at').count('* as n')) as Array<{ n: number | string }>;
  return Number(rows[0]?.n ?? 0);
}
