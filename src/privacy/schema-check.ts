import type { Knex } from 'knex';
import { ConfigError } from '../errors.js';
import { type DataMap, forgetColumns, subjectLinks } from './data-map.js';
import { type ColumnTypes, isTextType, referencedColumns } from './sql.js';

/**
 * Checks the data map against the live database once at start-up: every table and column it
 * names must exist, and hash and template actions need text columns. Returns the column types,
 * which the export query uses to render timestamps.
 */
export async function checkDataMapAgainstDatabase(knex: Knex, map: DataMap, source: string): Promise<ColumnTypes> {
  const refs = map.categories.flatMap(referencedColumns);
  if (map.subject) refs.push({ table: map.subject.table, column: map.subject.column, where: 'subject' });
  const a = map.authorization;
  if (a) {
    refs.push({ table: a.platform_owner.table, column: a.platform_owner.subject_column, where: 'authorization.platform_owner.subject_column' });
    refs.push({ table: a.platform_owner.table, column: a.platform_owner.flag_column, where: 'authorization.platform_owner.flag_column' });
    const m = a.memberships;
    for (const key of ['subject_column', 'organization_column', 'role_column'] as const) {
      refs.push({ table: m.table, column: m[key], where: `authorization.memberships.${key}` });
    }
    refs.push({ table: m.organization_label.table, column: m.organization_label.column, where: 'authorization.memberships.organization_label.column' });
    refs.push({ table: m.organization_label.table, column: m.organization_label.references, where: 'authorization.memberships.organization_label.references' });
  }
  if (map.audit) {
    const au = map.audit;
    for (const key of ['event_type_column', 'actor_column', 'target_column', 'details_column', 'timestamp_column'] as const) {
      refs.push({ table: au.table, column: au[key], where: `audit.${key}` });
    }
  }

  const tables = [...new Set(refs.map((r) => r.table))];
  const types = new Map<string, Map<string, string>>();
  for (const table of tables) {
    const [schema, name] = table.includes('.') ? (table.split('.') as [string, string]) : [undefined, table];
    const rows: Array<{ column_name: string; data_type: string }> = await knex
      .select('column_name', 'data_type')
      .from('information_schema.columns')
      .where('table_name', name)
      .andWhere('table_schema', schema ?? knex.raw('current_schema()'));
    types.set(table, new Map(rows.map((r) => [r.column_name, r.data_type])));
  }

  for (const r of refs) {
    const cols = types.get(r.table);
    if (cols === undefined || cols.size === 0) {
      throw new ConfigError(`${r.where}: table '${r.table}' does not exist in the database (run the migrations, or fix the data map)`, source);
    }
    if (!cols.has(r.column)) {
      throw new ConfigError(`${r.where}: column '${r.column}' does not exist in table '${r.table}'`, source);
    }
  }

  for (const c of map.categories) {
    for (const [column, action] of Object.entries(forgetColumns(c) ?? {})) {
      const needsText = action === 'hash' || (typeof action === 'object' && 'template' in action);
      const type = types.get(c.table)?.get(column);
      if (needsText && type !== undefined && !isTextType(type)) {
        throw new ConfigError(`categories.${c.name}.forget.columns.${column}: hash and template need a text column, but '${column}' is ${type}`, source);
      }
      if (typeof action === 'object' && 'keep_keys' in action && type !== 'json' && type !== 'jsonb') {
        throw new ConfigError(
          `categories.${c.name}.forget.columns.${column}: keep_keys needs a json or jsonb column, but '${column}' is ${type ?? 'unknown'}`,
          source,
        );
      }
    }
  }
  for (const c of map.categories) {
    for (const [name, rule] of Object.entries(c.rectify)) {
      const type = types.get(c.table)?.get(rule.column ?? name);
      if (!isTextType(type)) {
        throw new ConfigError(
          `categories.${c.name}.rectify.${name}: rectification writes text, but column '${rule.column ?? name}' is ${type ?? 'unknown'}`,
          source,
        );
      }
    }
  }
  checkCoverage(map, types, await keyColumns(knex, [...new Set(map.categories.map((c) => c.table))]), source);
  return types;
}

/** Types whose values can hold personal data as written: text, JSON, network addresses. */
const PERSONAL_TYPES = new Set(['text', 'character varying', 'character', 'json', 'jsonb', 'inet', 'cidr', 'macaddr', 'macaddr8', 'xml', 'ARRAY']);

/**
 * Every text or JSON column of a table that holds subject data must be declared: what forget
 * does to it, or an explicit keep with a reason. Key columns (primary and foreign keys, the
 * subject and link columns) are identifiers and need no declaration. A table whose rows forget
 * deletes, or a category kept as a whole with a reason, declares all its columns.
 */
function checkCoverage(map: DataMap, types: ColumnTypes, keys: ReadonlyMap<string, ReadonlySet<string>>, source: string): void {
  for (const c of map.categories) {
    if (c.forget === 'delete' || (typeof c.forget === 'object' && 'keep' in c.forget)) continue;
    const at = `categories.${c.name}`;
    if (c.forget === 'keep') {
      throw new ConfigError(`${at}.forget: a category kept as a whole needs a reason: write forget: {keep: "why these rows stay"}`, source);
    }
    const declared = forgetColumns(c) ?? {};
    const exempt = new Set([
      ...(keys.get(c.table) ?? []),
      ...subjectLinks(c)
        .filter((l) => l.table === c.table)
        .map((l) => l.column),
      ...c.joins.map((j) => j.column),
    ]);
    for (const [column, type] of types.get(c.table) ?? []) {
      if (!PERSONAL_TYPES.has(type) || exempt.has(column)) continue;
      const action = declared[column];
      if (action === undefined) {
        throw new ConfigError(
          `${at}: column '${column}' of table '${c.table}' (${type}) is not declared: say what forget does to it under forget.columns, or keep it with a reason: ${column}: {keep: "why"}`,
          source,
        );
      }
      if (action === 'keep') {
        throw new ConfigError(
          `${at}.forget.columns.${column}: column '${column}' of table '${c.table}' is kept without a reason: write ${column}: {keep: "why"}`,
          source,
        );
      }
    }
  }
}

/** Primary- and foreign-key columns per table: identifiers, not personal values. */
async function keyColumns(knex: Knex, tables: readonly string[]): Promise<Map<string, Set<string>>> {
  const out = new Map<string, Set<string>>();
  for (const table of tables) {
    const [schema, name] = table.includes('.') ? (table.split('.') as [string, string]) : [undefined, table];
    const rows = (await knex
      .select('k.column_name')
      .from('information_schema.key_column_usage as k')
      .join('information_schema.table_constraints as c', function () {
        this.on('c.constraint_name', 'k.constraint_name').andOn('c.constraint_schema', 'k.constraint_schema');
      })
      .whereIn('c.constraint_type', ['PRIMARY KEY', 'FOREIGN KEY'])
      .andWhere('k.table_name', name)
      .andWhere('k.table_schema', schema ?? knex.raw('current_schema()'))) as Array<{ column_name: string }>;
    out.set(table, new Set(rows.map((r) => r.column_name)));
  }
  return out;
}
