import type { Knex } from 'knex';
import { type ConfirmationOutcome, type NewConfirmation, TABLE } from './ledger.js';
import { inSession } from './session.js';

/**
 * Records downstream services' receipts, a batch at a time. A forget in state `anonymized`
 * becomes `completed` once every expected service has confirmed a purge. Receipts for requests
 * this ledger does not hold are ignored (another Lethe installation may share the stream); the
 * outcome of each receipt is returned, for logging.
 *
 * Two statements in one transaction, sent together on PostgreSQL (one round trip for the whole
 * batch): the requests' rows locked in id order, so that batches holding receipts of one request
 * take turns (and never deadlock), then everything else in one statement, which starts once the
 * locks are held and so sees every receipt recorded before. Within a batch, a later receipt of a
 * service for a request replaces an earlier one, as if they had been recorded one after the other.
 */
export async function recordConfirmations(
  knex: Knex,
  receipts: readonly NewConfirmation[],
  expectedServices: readonly string[],
  now: Date,
): Promise<ConfirmationOutcome[]> {
  if (receipts.length === 0) return [];
  const ids = receipts.map((c) => c.requestId);
  const rows = await inSession(knex, async (s) => {
    const [, result] = await s.run(
      [
        { sql: `SELECT "id" FROM "${TABLE}" WHERE "id" = ANY (?::uuid[]) ORDER BY "id" FOR UPDATE`, bindings: [ids] },
        {
          sql: RECORD_CONFIRMATIONS,
          bindings: [
            ids,
            receipts.map((c) => c.service),
            receipts.map((c) => c.status),
            receipts.map((c) => JSON.stringify(c.rowsAffected)),
            receipts.map((c) => c.purgedAt),
            receipts.map((c) => c.error ?? null) as Knex.RawBinding,
            now,
            now,
            [...expectedServices],
          ],
        },
      ],
      { commit: true },
    );
    return (result ?? []) as Array<{ id: string; type: string; completed: boolean }>;
  });
  const requests = new Map(rows.map((r) => [r.id, r]));
  // The receipt that completed a request is its last one in the batch.
  const last = new Map(receipts.map((c, i) => [c.requestId.toLowerCase(), i]));
  return receipts.map((c, i) => {
    const r = requests.get(c.requestId.toLowerCase());
    if (r?.type !== 'forget') return 'unknown-request';
    return r.completed && last.get(c.requestId.toLowerCase()) === i ? 'completed' : 'recorded';
  });
}

const RECORD_CONFIRMATIONS = `WITH "r" AS (
  SELECT * FROM unnest(?::uuid[], ?::text[], ?::text[], ?::jsonb[], ?::timestamptz[], ?::text[]) WITH ORDINALITY
    AS "r"("request_id", "service", "status", "rows_affected", "purged_at", "error", "seq")),
"last" AS (SELECT DISTINCT ON ("request_id", "service") * FROM "r" ORDER BY "request_id", "service", "seq" DESC),
"req" AS (SELECT "id", "type", "state" FROM "${TABLE}" WHERE "id" IN (SELECT "request_id" FROM "last")),
"ins" AS (
  INSERT INTO "lethe_confirmations" ("request_id", "service", "status", "rows_affected", "purged_at", "received_at", "error")
  SELECT "l"."request_id", "l"."service", "l"."status", "l"."rows_affected", "l"."purged_at", ?::timestamptz, "l"."error"
  FROM "last" AS "l" JOIN "req" AS "q" ON "q"."id" = "l"."request_id" AND "q"."type" = 'forget'
  ON CONFLICT ("request_id", "service") DO UPDATE SET "status" = EXCLUDED."status", "rows_affected" = EXCLUDED."rows_affected",
    "purged_at" = EXCLUDED."purged_at", "received_at" = EXCLUDED."received_at", "error" = EXCLUDED."error"
  RETURNING 1),
"done" AS (
  UPDATE "${TABLE}" AS "p" SET "state" = 'completed', "completed_at" = ?::timestamptz
  FROM "req" AS "q"
  WHERE "p"."id" = "q"."id" AND "q"."type" = 'forget' AND "q"."state" = 'anonymized'
    AND NOT EXISTS (SELECT 1 FROM unnest(?::text[]) AS "e"("service")
      WHERE (coalesce(
        (SELECT "l"."status" = 'purged' FROM "last" AS "l" WHERE "l"."request_id" = "q"."id" AND "l"."service" = "e"."service"),
        EXISTS (SELECT 1 FROM "lethe_confirmations" AS "c" WHERE "c"."request_id" = "q"."id" AND "c"."service" = "e"."service" AND "c"."status" = 'purged')
      )) IS NOT TRUE)
  RETURNING "p"."id")
SELECT "q"."id"::text AS "id", "q"."type", "q"."id" IN (SELECT "id" FROM "done") AS "completed" FROM "req" AS "q"`;
