import type { Knex } from 'knex';
import { type ColumnKind, columnKind } from './copy-json.js';
import type { Category, SubjectRelation } from './data-map.js';
import { type ColumnAction, forgetColumns, joinAlias, splitColumnRef, subjectLinks } from './data-map.js';

/**
 * SQL fragments built from a validated data map. Identifiers come only from the data map,
 * whose schema admits nothing but [A-Za-z_][A-Za-z0-9_]* names, and are quoted here; every
 * value (the subject id, replacement values, limits) is a bound parameter.
 */

export interface Fragment {
  readonly sql: string;
  readonly bindings: readonly Knex.RawBinding[];
  /**
   * A transaction-local setting the SQL reads with current_setting() instead of a bound
   * parameter: COPY takes no parameters, and values are never spliced into SQL text.
   */
  readonly setting?: { readonly name: string; readonly value: string };
}

/** Where the subject id comes from in generated SQL: a bound parameter, or the setting below. */
const SUBJECT_SETTING = 'lethe.subject';
const SUBJECT_FROM_SETTING = `current_setting('${SUBJECT_SETTING}')`;

export function quoteIdent(name: string): string {
  return name
    .split('.')
    .map((part) => `"${part}"`)
    .join('.');
}

export function qualified(qualifier: string, column: string): string {
  return `${quoteIdent(qualifier)}.${quoteIdent(column)}`;
}

/**
 * The rows of `qualifier` (an alias or the table itself) that belong to the subject. With
 * `fromSetting`, the subject id is read from SUBJECT_SETTING (text columns only).
 */
export function subjectPredicate(relation: SubjectRelation, qualifier: string, subjectId: string, fromSetting = false): Fragment {
  const value = fromSetting ? SUBJECT_FROM_SETTING : '?';
  const bind = (n: number) => (fromSetting ? [] : Array.from({ length: n }, () => subjectId));
  if ('column' in relation) {
    return { sql: `${qualified(qualifier, relation.column)} = ${value}`, bindings: bind(1) };
  }
  if ('columns' in relation) {
    const parts = relation.columns.map((c) => `${qualified(qualifier, c)} = ${value}`);
    return { sql: `(${parts.join(' OR ')})`, bindings: bind(relation.columns.length) };
  }
  // Innermost first: the last hop's rows that hold the subject, then each hop outwards.
  const hops = relation.via;
  let inner = '';
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i];
    if (hop === undefined) continue;
    const alias = `lethe_via${i === 0 ? '' : i}`;
    const next = hops[i + 1];
    const where = next === undefined ? `${qualified(alias, hop.subject_column ?? '')} = ${value}` : `${qualified(alias, next.column)} IN (${inner})`;
    inner = `SELECT ${qualified(alias, hop.references)} FROM ${quoteIdent(hop.table)} AS ${quoteIdent(alias)} WHERE ${where}`;
  }
  const first = hops[0];
  return { sql: `${qualified(qualifier, first?.column ?? '')} IN (${inner})`, bindings: bind(1) };
}

const TEXT_TYPES = new Set(['text', 'character varying', 'character', 'citext']);

/** Whether information_schema's data_type is a text type. */
export const isTextType = (dataType: string | undefined): boolean => TEXT_TYPES.has(dataType ?? '');

/** Whether every column compared with the subject id is text, so current_setting() can stand in for a parameter. */
export function subjectColumnsAreText(category: Category, types: ColumnTypes): boolean {
  return subjectLinks(category)
    .filter((l) => l.role === 'subject')
    .every((l) => isTextType(types.get(l.table)?.get(l.column)));
}

/** Column types as information_schema.columns reports them, per table then column. */
export type ColumnTypes = ReadonlyMap<string, ReadonlyMap<string, string>>;

const ROOT = 't';

/** Resolves a field's column reference to its SQL qualifier and the table it lives in. */
function resolveRef(category: Category, ref: string): { qualifier: string; table: string; column: string } {
  const [q, column] = splitColumnRef(ref);
  if (q === undefined) return { qualifier: ROOT, table: category.table, column };
  const j = category.joins.find((x) => joinAlias(x) === q);
  // The data map loader has already checked that every qualifier names a join.
  return { qualifier: q, table: j?.table ?? q, column };
}

/** Timestamps are exported in UTC as 2024-06-15T10:00:00Z (microseconds only when present). */
function exportExpression(sqlRef: string, dataType: string | undefined): string {
  if (dataType === 'timestamp with time zone' || dataType === 'timestamp without time zone') {
    const utc = dataType === 'timestamp with time zone' ? `${sqlRef} AT TIME ZONE 'UTC'` : sqlRef;
    return `CASE WHEN date_trunc('second', ${sqlRef}) = ${sqlRef} THEN to_char(${utc}, 'YYYY-MM-DD"T"HH24:MI:SS"Z"') ELSE to_char(${utc}, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END`;
  }
  return sqlRef;
}

function fromClause(category: Category): string {
  const joins = category.joins
    .map((j) => ` LEFT JOIN ${quoteIdent(j.table)} AS ${quoteIdent(joinAlias(j))} ON ${qualified(joinAlias(j), j.references)} = ${qualified(ROOT, j.column)}`)
    .join('');
  return `${quoteIdent(category.table)} AS "${ROOT}"${joins}`;
}

/** The FROM, WHERE, ORDER BY and LIMIT of a category's export, shared by both forms of the query. */
function exportTail(category: Category, subjectId: string, fromSetting: boolean): { sql: string; where: Fragment } {
  const spec = category.export;
  if (spec === undefined) throw new Error(`category ${category.name} is not exported`);
  const where = subjectPredicate(category.subject, ROOT, subjectId, fromSetting);
  const order = spec.order_by.map((o) => {
    const r = resolveRef(category, o.column);
    return `${qualified(r.qualifier, r.column)} ${o.direction === 'desc' ? 'DESC' : 'ASC'}`;
  });
  const limit = spec.limit === undefined ? '' : ` LIMIT ${spec.limit}`;
  return { sql: ` WHERE ${where.sql}${order.length > 0 ? ` ORDER BY ${order.join(', ')}` : ''}${limit}`, where };
}

/** Each exported field's SQL expression (timestamps formatted) and information_schema type. */
function exportFields(category: Category, types: ColumnTypes): Array<{ name: string; expr: string; ref: string; dataType: string | undefined }> {
  return (category.export?.fields ?? []).map((f) => {
    const r = resolveRef(category, f.column);
    const dataType = types.get(r.table)?.get(r.column);
    const ref = qualified(r.qualifier, r.column);
    return { name: f.name, expr: exportExpression(ref, dataType), ref, dataType };
  });
}

const subjectSetting = (fromSetting: boolean, subjectId: string) => (fromSetting ? { setting: { name: SUBJECT_SETTING, value: subjectId } } : {});

/**
 * One JSON text per row, rendered by PostgreSQL: row_to_json over a projection keeps the data
 * map's field order and no insignificant whitespace, and lets ORDER BY use columns that are not
 * exported. As a subquery in the select list it is evaluated after ORDER BY and LIMIT, for the
 * rows kept only (a category limited to 50 of a person's 10,000 rows renders 50).
 */
export function exportQuery(category: Category, types: ColumnTypes, subjectId: string, options: { subjectFromSetting?: boolean } = {}): Fragment {
  const projection = exportFields(category, types)
    .map((f) => `${f.expr} AS ${quoteIdent(f.name)}`)
    .join(', ');
  const fromSetting = options.subjectFromSetting === true;
  const tail = exportTail(category, subjectId, fromSetting);
  return {
    sql: `SELECT (SELECT row_to_json("x")::text FROM (SELECT ${projection}) AS "x") AS "j" FROM ${fromClause(category)}${tail.sql}`,
    bindings: tail.where.bindings,
    ...subjectSetting(fromSetting, subjectId),
  };
}

/**
 * A timestamp of years 1 to 9999 comes as its standard text (the transaction's TimeZone is UTC
 * and DateStyle ISO: see row-cursor.ts), which Node turns into the export's form far more cheaply
 * than to_char; any other (BC, year 10000 and later, infinity) comes formatted by to_char.
 */
const TIMESTAMP_RANGE: Record<string, readonly [string, string]> = {
  'timestamp with time zone': ["'0001-01-01 00:00:00+00'::timestamptz", "'10000-01-01 00:00:00+00'::timestamptz"],
  'timestamp without time zone': ["'0001-01-01 00:00:00'::timestamp", "'10000-01-01 00:00:00'::timestamp"],
};

function columnExpression(f: { expr: string; ref: string; dataType: string | undefined }, kind: ColumnKind | undefined): string {
  if (kind === 'rendered') return `to_json(${f.expr})::text`;
  const range = kind === 'timestamp' ? TIMESTAMP_RANGE[f.dataType ?? ''] : undefined;
  if (range === undefined) return f.expr;
  return `CASE WHEN ${f.ref} >= ${range[0]} AND ${f.ref} < ${range[1]} THEN ${f.ref}::text ELSE ${f.expr} END`;
}

/**
 * The same rows as exportQuery, as plain columns for COPY's text format, for Node to render
 * the JSON (copy-json.ts): a column whose type Node does not render comes as to_json's text.
 */
export function exportColumnsQuery(category: Category, types: ColumnTypes, subjectId: string): { query: Fragment; names: string[]; kinds: ColumnKind[] } {
  const fields = exportFields(category, types);
  const kinds = fields.map((f) => columnKind(f.dataType));
  const projection = fields.map((f, i) => columnExpression(f, kinds[i])).join(', ');
  const tail = exportTail(category, subjectId, true);
  return {
    query: {
      sql: `SELECT ${projection.length > 0 ? projection : 'NULL'} FROM ${fromClause(category)}${tail.sql}`,
      bindings: tail.where.bindings,
      ...subjectSetting(true, subjectId),
    },
    names: fields.map((f) => f.name),
    kinds,
  };
}

export function countQuery(category: Category, subjectId: string): Fragment {
  const where = subjectPredicate(category.subject, ROOT, subjectId);
  return { sql: `SELECT count(*)::bigint AS "n" FROM ${quoteIdent(category.table)} AS "${ROOT}" WHERE ${where.sql}`, bindings: where.bindings };
}

/** Every table and column the category's SQL touches, for checking against the database. */
export function referencedColumns(category: Category): Array<{ table: string; column: string; where: string }> {
  const out: Array<{ table: string; column: string; where: string }> = [];
  const at = `categories.${category.name}`;
  const rel = category.subject;
  if ('via' in rel) {
    let from = category.table;
    rel.via.forEach((hop, i) => {
      const path = rel.via.length === 1 ? `${at}.subject.via` : `${at}.subject.via[${i}]`;
      out.push({ table: from, column: hop.column, where: `${path}.column` });
      out.push({ table: hop.table, column: hop.references, where: `${path}.references` });
      if (hop.subject_column !== undefined) out.push({ table: hop.table, column: hop.subject_column, where: `${path}.subject_column` });
      from = hop.table;
    });
  } else {
    const kind = 'column' in rel ? 'column' : 'columns';
    for (const l of subjectLinks(category)) out.push({ table: l.table, column: l.column, where: `${at}.subject.${kind}` });
  }
  for (const j of category.joins) {
    out.push({ table: category.table, column: j.column, where: `${at}.joins.${joinAlias(j)}.column` });
    out.push({ table: j.table, column: j.references, where: `${at}.joins.${joinAlias(j)}.references` });
  }
  for (const s of category.secret) out.push({ table: category.table, column: s, where: `${at}.secret` });
  if (category.export) {
    for (const f of category.export.fields) {
      const r = resolveRef(category, f.column);
      out.push({ table: r.table, column: r.column, where: `${at}.export.fields.${f.name}` });
    }
    for (const o of category.export.order_by) {
      const r = resolveRef(category, o.column);
      out.push({ table: r.table, column: r.column, where: `${at}.export.order_by` });
    }
  }
  for (const [c, action] of Object.entries(forgetColumns(category) ?? {})) {
    out.push({ table: category.table, column: c, where: `${at}.forget.columns.${c}` });
    for (const ref of templateColumns(action)) out.push({ table: category.table, column: ref, where: `${at}.forget.columns.${c}.template` });
  }
  for (const [name, rule] of Object.entries(category.rectify)) {
    out.push({ table: category.table, column: rule.column ?? name, where: `${at}.rectify.${name}` });
  }
  return out;
}

/** The columns a template action reads with {column:NAME}. */
function templateColumns(action: ColumnAction): string[] {
  if (typeof action !== 'object' || !('template' in action)) return [];
  return [...action.template.matchAll(/\{column:([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1] ?? '');
}
