import type { Knex } from 'knex';
import { CancelledError } from '../errors.js';
import type { Fragment } from './sql.js';

let cursorSeq = 0;

/**
 * Reads a query's single text column `j` through a server-side cursor inside the caller's
 * transaction, `fetchRows` at a time. Only one page is in memory; the next page is fetched when
 * the consumer asks for it, so a slow client slows the query instead of filling memory, and a
 * cancelled call stops between pages (the caller's rollback closes the cursor).
 */
export async function* readJsonRows(trx: Knex.Transaction, query: Fragment, fetchRows: number, signal: AbortSignal): AsyncGenerator<string[]> {
  const name = `lethe_export_${++cursorSeq}`;
  await trx.raw(`DECLARE "${name}" NO SCROLL CURSOR FOR ${query.sql}`, query.bindings);
  for (;;) {
    if (signal.aborted) throw new CancelledError('The export was cancelled');
    const result = (await trx.raw(`FETCH FORWARD ${fetchRows} FROM "${name}"`)) as { rows: Array<{ j: string }> };
    const rows = result.rows;
    if (rows.length === 0) break;
    yield rows.map((r) => r.j);
    if (rows.length < fetchRows) break;
  }
  await trx.raw(`CLOSE "${name}"`);
}
