import { StringDecoder } from 'node:string_decoder';
import type { Knex } from 'knex';
import pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { CancelledError } from '../errors.js';
import type { CopyRowRenderer } from './copy-json.js';
import type { Fragment } from './sql.js';

let cursorSeq = 0;
/** The settings already made in each transaction (see readJsonRows). */
const settingsMade = new WeakMap<Knex.Transaction, string>();
const NO_READ_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * Reads a query's single text column `j` inside the caller's transaction, in pages of
 * `pageRows`. Only one page is in memory; the next is read when the consumer asks for it, so a
 * slow client slows the query instead of filling memory, and a cancelled call stops between
 * pages. On node-postgres the rows come through `COPY (query) TO STDOUT`, which streams without
 * a round trip per page (bench/RESULTS.md); elsewhere (PGlite) through a server-side cursor.
 */
export async function* readJsonRows(
  trx: Knex.Transaction,
  query: Fragment,
  pageRows: number,
  signal: AbortSignal,
  columns?: { readonly query: Fragment; readonly renderer: CopyRowRenderer },
): AsyncGenerator<string[]> {
  // A transaction's client hands out the transaction's own connection.
  const conn: unknown = await (trx.client as { acquireConnection(): Promise<unknown> }).acquireConnection();
  // COPY takes no parameters: only a query that reads its values from settings can use it.
  const copy = conn instanceof pg.Client && query.bindings.length === 0;
  // COPY runs at the pace of the client reading the export (backpressure), which may be slower
  // than any statement timeout: it runs without (the caller's deadline or cancellation still
  // ends it). The settings last until the transaction ends: made once for all its categories.
  const settings = [...(query.setting === undefined ? [] : [query.setting.name, query.setting.value]), ...(copy ? ['statement_timeout', '0'] : [])];
  const key = settings.join('\0');
  if (settings.length > 0 && settingsMade.get(trx) !== key) {
    const calls = Array.from({ length: settings.length / 2 }, () => 'set_config(?, ?, true)');
    await trx.raw(`SELECT ${calls.join(', ')}`, settings);
    settingsMade.set(trx, key);
  }
  if (conn instanceof pg.Client && copy) {
    // With `columns`, PostgreSQL sends plain columns and Node renders the same JSON (copy-json.ts),
    // so that the two processes share the work.
    if (columns !== undefined && columns.query.bindings.length === 0) {
      const renderer = columns.renderer;
      yield* copyRows(conn, columns.query.sql, pageRows, signal, (line) => renderer.render(line));
    } else yield* copyRows(conn, query.sql, pageRows, signal, unescapeJsonLine);
  } else yield* cursorRows(trx, query, pageRows, signal);
}

async function* cursorRows(trx: Knex.Transaction, query: Fragment, fetchRows: number, signal: AbortSignal): AsyncGenerator<string[]> {
  const name = `lethe_export_${++cursorSeq}`;
  await trx.raw(`DECLARE "${name}" NO SCROLL CURSOR FOR ${query.sql}`, query.bindings);
  for (;;) {
    throwIfAborted(signal);
    const result = (await trx.raw(`FETCH FORWARD ${fetchRows} FROM "${name}"`)) as { rows: Array<{ j: string }> };
    const rows = result.rows;
    if (rows.length === 0) break;
    yield rows.map((r) => r.j);
    if (rows.length < fetchRows) break;
  }
  await trx.raw(`CLOSE "${name}"`);
}

// COPY's text format escapes only backslashes in a JSON text: it holds no raw tab or newline.
const unescapeJsonLine = (line: string): string => (line.includes('\\') ? line.replaceAll('\\\\', '\\') : line);

async function* copyRows(conn: pg.Client, sql: string, pageRows: number, signal: AbortSignal, toRecord: (line: string) => string): AsyncGenerator<string[]> {
  // pg's query_timeout would fail a COPY that outlasts it; 0 means "the connection's default",
  // so the longest timer Node has (24.8 days) stands for none.
  const copy = conn.query(Object.assign(copyTo(`COPY (${sql}) TO STDOUT`), { query_timeout: NO_READ_TIMEOUT_MS }));
  // pg clears that timer only through the query's callback, which a COPY stream never calls: it
  // is called once the COPY is over, or the timer would hold the stream (and the connection) in
  // memory for those 24.8 days and keep the process from exiting after its shutdown.
  const clearReadTimer = () => (copy as { callback?: () => void }).callback?.();
  let settled = false;
  // The listener also keeps an error that arrives after we stopped reading from being unhandled.
  copy
    .on('end', () => {
      settled = true;
      clearReadTimer();
    })
    .on('error', () => {
      settled = true;
      clearReadTimer();
    });
  const decoder = new StringDecoder('utf8');
  let tail = '';
  let page: string[] = [];
  try {
    for await (const chunk of copy as AsyncIterable<Buffer>) {
      const lines = (tail + decoder.write(chunk)).split('\n');
      tail = lines.pop() ?? '';
      for (const line of lines) {
        page.push(toRecord(line));
        if (page.length >= pageRows) {
          throwIfAborted(signal);
          yield page;
          page = [];
        }
      }
    }
    throwIfAborted(signal);
    if (page.length > 0) yield page;
  } finally {
    // Stopped early: the server would go on sending the rest of the COPY. Closing the socket
    // ends the backend and its query; the caller's rollback then fails harmlessly and the pool
    // discards the connection.
    if (!settled) conn.connection.stream.destroy();
    clearReadTimer();
  }
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new CancelledError('The export was cancelled');
}
