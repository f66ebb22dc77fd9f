import { createHash } from 'node:crypto';
import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';

/**
 * Statements that a hot path sends again and again with other values (a forget's) run on
 * PostgreSQL as named prepared statements: each connection parses and plans one once, and
 * PostgreSQL keeps its plan (a forget of the default data map is a statement of twelve parts,
 * whose planning costs more than running it for a typical subject). The name is a digest of
 * the SQL, so one name never stands for two statements. Embedded PGlite runs them as they are.
 */

const names = new Map<string, string>();
const MAX_NAMES = 1_000;

function nameOf(sql: string): string {
  let name = names.get(sql);
  if (name === undefined) {
    if (names.size >= MAX_NAMES) names.clear();
    name = `lethe_${createHash('sha256').update(sql).digest('hex').slice(0, 32)}`;
    names.set(sql, name);
  }
  return name;
}

/** Runs `sql` (with `?` for the values) and returns its rows. */
export async function queryPrepared(db: Knex | Knex.Transaction, sql: string, bindings: readonly Knex.RawBinding[]): Promise<Array<Record<string, unknown>>> {
  const q = db.raw(sql, bindings as Knex.RawBinding[]);
  if (!(db.client instanceof ClientPgLite)) q.options({ name: nameOf(sql) });
  return ((await q) as { rows: Array<Record<string, unknown>> }).rows;
}
