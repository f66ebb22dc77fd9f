import pg from 'pg';
import { CancelledError } from '../errors.js';
import { CopyOutQuery } from '../store/copy-out.js';
import type { SnapshotQueries } from '../store/session.js';
import type { CopyRowRenderer } from './copy-json.js';
import { type JsonRecords, JsonRecordsBuilder } from './json-records.js';
import type { Fragment } from './sql.js';

let cursorSeq = 0;
/** The settings already made in each snapshot (see readJsonRows). */
const settingsMade = new WeakMap<SnapshotQueries, string>();
const NO_READ_TIMEOUT_MS = 2 ** 31 - 1;

/** When a page of records is handed on: whichever comes first. */
export interface PageLimits {
  readonly rows: number;
  /** Bytes of JSON text (default 64 KiB). */
  readonly bytes?: number;
}

/**
 * Pages, and so gRPC messages, of 64 KiB: a 1M-row export took 1.4 s of server CPU with them
 * against 2.5 s with 128 KiB and 2.2 s with 96 KiB (bench/RESULTS.md, export). The buffers of
 * the larger sizes, and grpc-js's copy of each, cost far more to allocate and free.
 */
const DEFAULT_PAGE_BYTES = 64 * 1024;

/**
 * Reads a query's single text column `j` (a JSON record) inside the caller's transaction, in
 * pages (`limits`). Only one page is in memory; the next is read when the consumer asks for it,
 * so a slow client slows the query instead of filling memory, and a cancelled call stops between
 * pages. On node-postgres the rows come through `COPY (query) TO STDOUT`, which streams without
 * a round trip per page (bench/RESULTS.md); elsewhere (PGlite) through a server-side cursor.
 */
export async function* readJsonRows(
  snapshot: SnapshotQueries,
  query: Fragment,
  limits: PageLimits,
  signal: AbortSignal,
  columns?: { readonly query: Fragment; readonly renderer: CopyRowRenderer },
): AsyncGenerator<JsonRecords> {
  const conn = await snapshot.connection();
  // COPY takes no parameters: only a query that reads its values from settings can use it.
  const copy = conn instanceof pg.Client && query.bindings.length === 0;
  // COPY runs at the pace of the client reading the export (backpressure), which may be slower
  // than any statement timeout: it runs without (the caller's deadline or cancellation still
  // ends it). Plain columns' timestamps come as their text in UTC (sql.ts, exportColumnsQuery).
  // The settings last until the transaction ends: made once for all its categories.
  const settings = [
    ...(query.setting === undefined ? [] : [query.setting.name, query.setting.value]),
    ...(copy ? ['statement_timeout', '0', 'TimeZone', 'UTC', 'DateStyle', 'ISO'] : []),
  ];
  const key = settings.join('\0');
  if (settings.length > 0 && settingsMade.get(snapshot) !== key) {
    const calls = Array.from({ length: settings.length / 2 }, () => 'set_config(?, ?, true)');
    await snapshot.raw({ sql: `SELECT ${calls.join(', ')}`, bindings: settings });
    settingsMade.set(snapshot, key);
  }
  const pages = new Pages(limits);
  if (conn instanceof pg.Client && copy) {
    // With `columns`, PostgreSQL sends plain columns and Node renders the same JSON (copy-json.ts),
    // so that the two processes share the work.
    if (columns !== undefined && columns.query.bindings.length === 0) {
      const renderer = columns.renderer;
      yield* copyRows(conn, columns.query.sql, pages, signal, (line, from, to, out) => renderer.renderInto(line, from, to, out));
    } else yield* copyRows(conn, query.sql, pages, signal, copyJsonLine);
  } else yield* cursorRows(snapshot, query, pages, signal);
}

/** Records collected into pages by the limits. */
class Pages {
  readonly builder = new JsonRecordsBuilder();
  private readonly bytes: number;

  constructor(readonly limits: PageLimits) {
    this.bytes = limits.bytes ?? DEFAULT_PAGE_BYTES;
  }

  get full(): boolean {
    return this.builder.length >= this.limits.rows || this.builder.bytes >= this.bytes;
  }

  get empty(): boolean {
    return this.builder.length === 0;
  }

  take(): JsonRecords {
    return this.builder.take();
  }

  /** Adds records given as text; yields each page they fill. */
  *add(records: readonly string[]): Generator<JsonRecords> {
    const out = this.builder;
    for (const r of records) {
      out.begin();
      out.pushString(r);
      out.end();
      if (this.full) yield this.take();
    }
  }
}

async function* cursorRows(snapshot: SnapshotQueries, query: Fragment, pages: Pages, signal: AbortSignal): AsyncGenerator<JsonRecords> {
  const name = `lethe_export_${++cursorSeq}`;
  const fetchRows = pages.limits.rows;
  await snapshot.raw({ sql: `DECLARE "${name}" NO SCROLL CURSOR FOR ${query.sql}`, bindings: query.bindings });
  for (;;) {
    throwIfAborted(signal);
    const rows = (await snapshot.raw({ sql: `FETCH FORWARD ${fetchRows} FROM "${name}"`, bindings: [] })) as Array<{ j: string }>;
    yield* pages.add(rows.map((r) => r.j));
    if (rows.length < fetchRows) break;
  }
  if (!pages.empty) yield pages.take();
  await snapshot.raw({ sql: `CLOSE "${name}"`, bindings: [] });
}

/** Records already read (as text), in pages by the limits. */
export function* pagesOf(records: readonly string[], limits: PageLimits): Generator<JsonRecords> {
  const pages = new Pages(limits);
  yield* pages.add(records);
  if (!pages.empty) yield pages.take();
}

// COPY's text format escapes only backslashes in a JSON text: it holds no raw tab or newline.
function copyJsonLine(src: Buffer, from: number, to: number, out: JsonRecordsBuilder): void {
  out.begin();
  if (src.subarray(from, to).includes(0x5c)) out.pushString(src.toString('utf8', from, to).replaceAll('\\\\', '\\'));
  else out.pushRange(src, from, to);
  out.end();
}

type RenderLine = (src: Buffer, from: number, to: number, out: JsonRecordsBuilder) => void;

async function* copyRows(conn: pg.Client, sql: string, pages: Pages, signal: AbortSignal, render: RenderLine): AsyncGenerator<JsonRecords> {
  const out = pages.builder;
  const copy = new CopyOutQuery<JsonRecords>(`COPY (${sql}) TO STDOUT`, {
    row(src, from, to) {
      render(src, from, to, out);
      return pages.full ? pages.take() : undefined;
    },
    rest: () => (pages.empty ? undefined : pages.take()),
  });
  // pg's query_timeout would fail a COPY that outlasts it; 0 means "the connection's default",
  // so the longest timer Node has (24.8 days) stands for none.
  conn.query(Object.assign(copy, { query_timeout: NO_READ_TIMEOUT_MS }));
  // pg clears that timer only through the query's callback, which it never calls for a COPY:
  // it is called once the COPY is over, or the timer would hold the stream (and the connection)
  // in memory for those 24.8 days and keep the process from exiting after its shutdown.
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
  try {
    for await (const page of copy as AsyncIterable<JsonRecords>) {
      throwIfAborted(signal);
      yield page;
    }
    throwIfAborted(signal);
  } finally {
    // Stopped early: the server would go on sending the rest of the COPY. Closing the socket
    // ends the backend and its query; the caller's rollback then fails harmlessly and the pool
    // discards the connection.
    if (!settled) conn.connection.stream.destroy();
    clearReadTimer();
  }
}

export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new CancelledError('The export was cancelled');
}
