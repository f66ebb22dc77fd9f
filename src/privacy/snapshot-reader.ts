import type { Knex } from 'knex';
import type { SnapshotQueries, Statement } from '../store/session.js';
import { type Category, type DataMap, documentKeyOf } from './data-map.js';
import type { DocumentCategory } from './export-document.js';
import type { JsonRecords } from './json-records.js';
import { type PageLimits, pagesOf, readJsonRows, throwIfAborted } from './row-cursor.js';
import { CopyRowRenderer } from './copy-json.js';
import { type ColumnTypes, type Fragment, countQuery, exportColumnsQuery, exportQuery, subjectColumnsAreText } from './sql.js';

export interface SnapshotCategory extends DocumentCategory {
  /** The most records exported (0: no limit). */
  readonly limit: number;
}

export interface SnapshotReaderOptions {
  /** Rows read from PostgreSQL at a time. */
  readonly fetchRows?: number;
  /** A batch closes once its records' JSON text reaches this many bytes. */
  readonly batchBytes?: number;
  /** Categories exporting at most this many rows are read with the counts (default SMALL_CATEGORY_ROWS). */
  readonly smallCategoryRows?: number;
}

/** What a snapshot holds for a subject: the categories, and the records of the small ones, read with them. */
export interface SnapshotContents {
  /** The exported categories in document order, with the subject's row count in each. */
  readonly categories: readonly SnapshotCategory[];
  /** Records of the small categories (SMALL_CATEGORY_ROWS), by category. */
  readonly small: ReadonlyMap<string, readonly string[]>;
}

/**
 * A category exporting at most this many rows is read with the counts, in the same statement
 * (PostgreSQL renders its records); a larger one is streamed after (COPY or a cursor). A typical
 * person's export is then one statement instead of one per category (bench/RESULTS.md).
 */
const SMALL_CATEGORY_ROWS = 500;
const RECORD_SEPARATOR = '\x1e';
/** Stands for the person's id in a statement built once for every person (no id holds a NUL). */
const SUBJECT_MARK = '\0subject';

/**
 * Reads what a data map exports about a subject, inside the caller's snapshot: the categories
 * (with their counts) first, then their records in batches of bounded size, category after
 * category. The server reads its own data map with it, and each sidecar its service's: the same
 * fields, limits, secrets and ordering rules everywhere.
 */
export class SnapshotReader {
  private readonly exported: readonly Category[];
  private readonly limits: PageLimits;
  private readonly smallRows: number;
  private contentsSql: { sql: string; bindings: readonly Knex.RawBinding[] } | undefined;

  constructor(
    map: DataMap,
    private readonly columnTypes: ColumnTypes,
    opts: SnapshotReaderOptions = {},
  ) {
    this.exported = map.categories.filter((c) => c.export !== undefined);
    this.limits = { rows: opts.fetchRows ?? 2000, bytes: opts.batchBytes };
    this.smallRows = opts.smallCategoryRows ?? SMALL_CATEGORY_ROWS;
  }

  /** The categories and their counts, and the small categories' records: one statement, one round trip. */
  async contents(snapshot: SnapshotQueries, subjectId: string): Promise<SnapshotContents> {
    const statement = this.contentsStatement(subjectId);
    return this.parseContents(statement === undefined ? [] : await snapshot.prepared(statement));
  }

  /**
   * The statement of contents() (to send with others: run it prepared), undefined when nothing is
   * exported. The same text for every subject.
   */
  contentsStatement(subjectId: string): Statement | undefined {
    if (this.exported.length === 0) return undefined;
    const statement = this.contentsTemplate();
    return { sql: statement.sql, bindings: statement.bindings.map((b) => (b === SUBJECT_MARK ? subjectId : b)) };
  }

  /** contents() from the rows of its statement. */
  parseContents(rows: ReadonlyArray<Record<string, unknown>>): SnapshotContents {
    const row = rows[0] ?? {};
    const categories: SnapshotCategory[] = [];
    const read = new Map<string, readonly string[]>();
    for (const [i, c] of this.exported.entries()) {
      const spec = c.export;
      const totalCount = Number(row[`n${i}`] ?? 0);
      if (totalCount === 0 && spec?.omit_when_empty === true) continue;
      categories.push({
        name: c.name,
        documentKey: spec?.shape === 'object' ? '' : documentKeyOf(c),
        shape: spec?.shape ?? 'list',
        countKey: spec?.count_key,
        totalCount,
        limit: spec?.limit ?? 0,
      });
      const r = row[`r${i}`];
      if (typeof r === 'string') read.set(c.name, r === '' ? [] : r.split(RECORD_SEPARATOR));
    }
    return { categories, small: read };
  }

  /** The statement of contents(), built once, with SUBJECT_MARK where the person's id goes. */
  private contentsTemplate(): { sql: string; bindings: readonly Knex.RawBinding[] } {
    if (this.contentsSql !== undefined) return this.contentsSql;
    const counts = this.exported.map((c) => countQuery(c, SUBJECT_MARK));
    const records = this.exported.map((c) => exportQuery(c, this.columnTypes, SUBJECT_MARK));
    // An uncorrelated subquery runs only when its CASE branch is taken (PostgreSQL evaluates it
    // on first use): a large category's records are not read here. string_agg keeps the order
    // the export query sorts its rows in; the records are joined by RS (0x1e), which no JSON
    // text holds unescaped (a text array would cost a slow parse of its own).
    const small = this.exported.map((c, i) => {
      const limit = c.export?.limit ?? 0;
      const rows = limit > 0 ? `least("n${i}", ${limit})` : `"n${i}"`;
      return `CASE WHEN ${rows} <= ${this.smallRows} THEN (SELECT coalesce(string_agg("q"."j", chr(30)), '') FROM (${records[i]?.sql}) AS "q") END AS "r${i}"`;
    });
    // OFFSET 0 keeps the counts a subquery of their own: pulled up, each CASE would count again.
    this.contentsSql = {
      sql: `SELECT "c".*, ${small.join(', ')} FROM (SELECT ${counts.map((q, i) => `(${q.sql}) AS "n${i}"`).join(', ')} OFFSET 0) AS "c"`,
      bindings: [...counts.flatMap((q) => q.bindings), ...records.flatMap((q) => q.bindings)],
    };
    return this.contentsSql;
  }

  /** The records of `contents`' categories, category after category, in batches; one page in memory at a time. */
  async *batches(
    snapshot: SnapshotQueries,
    subjectId: string,
    contents: SnapshotContents,
    signal: AbortSignal,
  ): AsyncGenerator<{ category: string; records: JsonRecords }> {
    const listed = new Set(contents.categories.map((c) => c.name));
    for (const c of this.exported) {
      if (!listed.has(c.name)) continue;
      const small = contents.small.get(c.name);
      const pages =
        small !== undefined
          ? pagesOf(small, this.limits)
          : readJsonRows(snapshot, this.exportQueryFor(c, subjectId), this.limits, signal, this.columnsQueryFor(c, subjectId));
      for await (const records of pages) {
        throwIfAborted(signal);
        yield { category: c.name, records };
      }
    }
  }
  /** The plain-columns form for COPY (only where the subject id can come from a setting). */
  private columnsQueryFor(c: Category, subjectId: string): { query: Fragment; renderer: CopyRowRenderer } | undefined {
    if (!subjectColumnsAreText(c, this.columnTypes)) return undefined;
    const q = exportColumnsQuery(c, this.columnTypes, subjectId);
    return { query: q.query, renderer: new CopyRowRenderer(q.names, q.kinds) };
  }

  private exportQueryFor(c: Category, subjectId: string): Fragment {
    return exportQuery(c, this.columnTypes, subjectId, { subjectFromSetting: subjectColumnsAreText(c, this.columnTypes) });
  }
}
