import type { Knex } from 'knex';
import { ConfigError } from '../errors.js';
import type { DataMap } from './data-map.js';
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
    if (typeof c.forget !== 'object') continue;
    for (const [column, action] of Object.entries(c.forget.columns)) {
      const needsText = action === 'hash' || (typeof action === 'object' && action !== null && 'template' in action);
      const type = types.get(c.table)?.get(column);
      if (needsText && type !== undefined && !isTextType(type)) {
        throw new ConfigError(`categories.${c.name}.forget.columns.${column}: hash and template need a text column, but '${column}' is ${type}`, source);
      }
    }
  }
  return types;
}
