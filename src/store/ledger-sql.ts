import type { Knex } from 'knex';
import { type NewRequest, type PrivacyRequestRecord, type RequestState, type Row, TABLE, finishStatement, requestInsert, toRecord } from './ledger.js';

/**
 * The ledger's reads and writes as parts of a larger statement (a forget reads its facts in one
 * statement and writes everything in another). Each is SQL with `?` for its values.
 */

interface Part {
  readonly table: string;
  readonly sql: string;
  readonly bindings: readonly Knex.RawBinding[];
}

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
    return { table: TABLE, ...requestInsert(req, `jsonb_build_object('rows_affected', ${rowsAffected})`).statement };
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
