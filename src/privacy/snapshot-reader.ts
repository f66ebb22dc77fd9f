import type { Knex } from 'knex';
import { type Category, type DataMap, documentKeyOf } from './data-map.js';
import type { DocumentCategory } from './export-document.js';
import type { JsonRecords } from './json-records.js';
import { type PageLimits, readJsonRows } from './row-cursor.js';
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
}

/**
 * Reads what a data map exports about a subject, inside the caller's snapshot: the categories
 * (with their counts) first, then their records in batches of bounded size, category after
 * category. The server reads its own data map with it, and each sidecar its service's: the same
 * fields, limits, secrets and ordering rules everywhere.
 */
export class SnapshotReader {
  private readonly exported: readonly Category[];
  private readonly limits: PageLimits;

  constructor(
    map: DataMap,
    private readonly columnTypes: ColumnTypes,
    opts: SnapshotReaderOptions = {},
  ) {
    this.exported = map.categories.filter((c) => c.export !== undefined);
    this.limits = { rows: opts.fetchRows ?? 2000, bytes: opts.batchBytes };
  }

  /** The exported categories in document order, with the subject's row count in each. */
  async categories(trx: Knex.Transaction, subjectId: string): Promise<SnapshotCategory[]> {
    // Every count in one statement: one round trip however many categories there are.
    const counts = this.exported.map((c) => countQuery(c, subjectId));
    const row =
      counts.length === 0
        ? {}
        : (
            (await trx.raw(
              `SELECT ${counts.map((q, i) => `(${q.sql}) AS "n${i}"`).join(', ')}`,
              counts.flatMap((q) => q.bindings),
            )) as { rows: Array<Record<string, number | string>> }
          ).rows[0];
    const out: SnapshotCategory[] = [];
    for (const [i, c] of this.exported.entries()) {
      const spec = c.export;
      const totalCount = Number(row?.[`n${i}`] ?? 0);
      if (totalCount === 0 && spec?.omit_when_empty === true) continue;
      out.push({
        name: c.name,
        documentKey: spec?.shape === 'object' ? '' : documentKeyOf(c),
        shape: spec?.shape ?? 'list',
        countKey: spec?.count_key,
        totalCount,
        limit: spec?.limit ?? 0,
      });
    }
    return out;
  }

  /** The records of `categories` (from categories()), category after category, in batches; one page in memory at a time. */
  async *batches(
    trx: Knex.Transaction,
    subjectId: string,
    categories: readonly SnapshotCategory[],
    signal: AbortSignal,
  ): AsyncGenerator<{ category: string; records: JsonRecords }> {
    const listed = new Set(categories.map((c) => c.name));
    for (const c of this.exported) {
      if (!listed.has(c.name)) continue;
      for await (const records of readJsonRows(trx, this.exportQueryFor(c, subjectId), this.limits, signal, this.columnsQueryFor(c, subjectId))) {
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
