import type { Knex } from 'knex';
import { type NewRequest, type PrivacyRequestRecord, type RequestState, type Row, TABLE, finishStatement, requestColumns, toRecord } from './ledger.js';

/**
 * The ledger's reads and writes as parts of a larger statement (a forget reads its facts in one
 * statement and writes everything in another). Each is SQL with `?` for its values.
 */

interface Part {
  readonly table: string;
  readonly sql: string;
  readonly bindings: readonly Knex.RawBinding[];
}

const COLUMNS = [
  'id',
  'type',
  'subject_id',
  'requester',
  'requested_by',
  'reason',
  'state',
  'idempotency_key',
  'received_at',
  'due_at',
  'completed_at',
  'error',
  'worker_id',
  'scheduled_for',
] as const;
const INSERT = `INSERT INTO "${TABLE}" (${[...COLUMNS, 'result'].map((c) => `"${c}"`).join(', ')}) VALUES (${COLUMNS.map(() => '?').join(', ')}, `;

/** The INSERT per SQL of rows affected (one in practice), so that its text is the same string each time. */
const insertSql = new Map<string, string>();

export const ledgerSql = {
  /** A scalar subquery: the request with this idempotency key as JSON, or NULL (read it with `record`). */
  byIdempotencyKey(key: string): { sql: string; bindings: Knex.RawBinding[] } {
    return { sql: `(SELECT row_to_json("r") FROM "${TABLE}" AS "r" WHERE "r"."idempotency_key" = ? LIMIT 1)`, bindings: [key] };
  },

  record(json: unknown): PrivacyRequestRecord | undefined {
    if (json === null || json === undefined) return undefined;
    return toRecord((typeof json === 'string' ? JSON.parse(json) : json) as Row);
  },

  /** ledger.insert as a statement part; `rowsAffected` is SQL for the jsonb array of rows affected. */
  insert(req: NewRequest, rowsAffected: string): Part {
    const values: Record<(typeof COLUMNS)[number], Knex.RawBinding> = requestColumns(req);
    let sql = insertSql.get(rowsAffected);
    if (sql === undefined) {
      sql = `${INSERT}jsonb_build_object('rows_affected', ${rowsAffected}))`;
      insertSql.set(rowsAffected, sql);
    }
    return { table: TABLE, sql, bindings: COLUMNS.map((c) => values[c]) };
  },

  /** ledger.finish as a statement part. */
  finish(id: string, state: 'completed' | 'failed', at: Date, error?: string): Part {
    return { table: TABLE, ...finishStatement(id, state, at, error) };
  },

  /** ledger.carriedOut as a statement part. */
  carriedOut(id: string, state: RequestState, at: Date, rowsAffected: string): Part {
    return {
      table: TABLE,
      sql: `UPDATE "${TABLE}" SET "state" = ?, "completed_at" = ?, "result" = jsonb_build_object('rows_affected', ${rowsAffected}) WHERE "id" = ?`,
      bindings: [state, state === 'completed' ? at : null, id],
    };
  },
};
