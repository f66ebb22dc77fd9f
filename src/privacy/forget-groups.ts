import type { Knex } from 'knex';
import { type Category, forgetColumns, isKeep, subjectLinks } from './data-map.js';
import { quoteIdent } from './sql.js';

/**
 * Which forget statements may run together as one data-modifying statement (a WITH of several
 * UPDATE/DELETE parts). Run apart, each statement sees what the ones before it did; run as
 * parts of one statement, they all see the database as it was before it, and foreign-key
 * actions and checks run at its end. So steps go together only where that changes nothing:
 *
 * - no two steps on one table (a row must not be changed twice in one statement);
 * - no step on, or reaching its subject through, a table that an earlier step of the statement
 *   can change by foreign key (a delete, or an update of a referenced column, of one of its
 *   ancestors), nor one that a foreign-key check of such a change reads;
 * - a table with triggers or rules, or whose changes cascade into one, has a statement alone.
 *
 * forgetOrder already runs a category before any that cuts the link it reaches its subject
 * through, so the links all steps read are the same either way.
 */

/** What the database says about one table, for grouping. */
export interface TableFacts {
  /** Columns of this table that some foreign key references. */
  readonly referenced: ReadonlySet<string>;
  /** Tables (as named in the data map) that reference this one, directly or through others. */
  readonly descendants: ReadonlySet<string>;
  /** This table, or one its changes cascade into, has triggers or rules of its own. */
  readonly isolated: boolean;
}

export type TableFactsByName = ReadonlyMap<string, TableFacts>;

/** What grouping needs of a forget step. */
interface Step {
  readonly category: Category;
  readonly action: 'update' | 'delete';
}

/** The grouping of a plan's steps, and the tables a trailing write may touch in its last statement. */
export interface ForgetGroups {
  /** Step indexes per statement, in order; every step exactly once. */
  readonly groups: ReadonlyArray<readonly number[]>;
  /** Tables that writes after the forget (the ledger, the audit entry …) may insert into in the last statement. */
  readonly trailingInserts: ReadonlySet<string>;
}

/** One statement per step, and nothing after it in the last: what holds without facts from the database. */
export function separateSteps(steps: readonly Step[]): ForgetGroups {
  return { groups: steps.map((_, i) => [i]), trailingInserts: new Set() };
}

/** Groups consecutive steps into as few statements as the facts allow (see above). */
export function groupSteps(steps: readonly Step[], facts: TableFactsByName, trailing: readonly string[]): ForgetGroups {
  const groups: number[][] = [];
  let current: number[] = [];
  let written = new Set<string>();
  let reachable = new Set<string>();
  const close = () => {
    if (current.length > 0) groups.push(current);
    current = [];
    written = new Set();
    reachable = new Set();
  };
  steps.forEach((step, i) => {
    const c = step.category;
    const f = facts.get(c.table);
    if (f === undefined || f.isolated) {
      close();
      groups.push([i]);
      return;
    }
    const reads = [c.table, ...subjectLinks(c).map((l) => l.table)];
    if (written.has(c.table) || reads.some((t) => reachable.has(t))) close();
    current.push(i);
    written.add(c.table);
    const changesKeys =
      step.action === 'delete' || Object.entries(forgetColumns(c) ?? {}).some(([column, action]) => !isKeep(action) && f.referenced.has(column));
    if (changesKeys) for (const d of f.descendants) reachable.add(d);
  });
  // Trailing inserts never join a statement that runs alone, nor meet a foreign-key action of it.
  const lastReaches = current.length > 0 || steps.length === 0 ? reachable : undefined;
  close();
  const trailingInserts = new Set(
    lastReaches === undefined
      ? []
      : trailing.filter((t) => {
          const f = facts.get(t);
          return f !== undefined && !f.isolated && !lastReaches.has(t);
        }),
  );
  return { groups, trailingInserts };
}

/**
 * Reads foreign keys, triggers and rules for `tables` (data map names, optionally
 * schema-qualified); a table that does not exist gets no entry.
 */
export async function readTableFacts(knex: Knex, tables: readonly string[]): Promise<Map<string, TableFacts>> {
  const names = [...new Set(tables)];
  const { rows: found } = (await knex.raw(
    `SELECT "x"."n" AS "name", to_regclass("x"."q")::oid::text AS "oid" FROM unnest(?::text[], ?::text[]) AS "x"("n", "q")`,
    [names, names.map(quoteIdent)],
  )) as { rows: Array<{ name: string; oid: string | null }> };
  const { rows: keys } = (await knex.raw(
    `SELECT "c"."conrelid"::oid::text AS "child", "c"."confrelid"::oid::text AS "parent", "a"."attname"::text AS "column"
     FROM pg_catalog.pg_constraint AS "c" JOIN pg_catalog.pg_attribute AS "a" ON "a"."attrelid" = "c"."confrelid" AND "a"."attnum" = ANY ("c"."confkey")
     WHERE "c"."contype" = 'f'`,
  )) as { rows: Array<{ child: string; parent: string; column: string }> };
  const { rows: special } = (await knex.raw(
    `SELECT "tgrelid"::oid::text AS "oid" FROM pg_catalog.pg_trigger WHERE NOT "tgisinternal"
     UNION SELECT "ev_class"::oid::text FROM pg_catalog.pg_rewrite WHERE "rulename" <> '_RETURN'`,
  )) as { rows: Array<{ oid: string }> };

  const children = new Map<string, Set<string>>();
  const referenced = new Map<string, Set<string>>();
  for (const k of keys) {
    children.set(k.parent, (children.get(k.parent) ?? new Set()).add(k.child));
    referenced.set(k.parent, (referenced.get(k.parent) ?? new Set()).add(k.column));
  }
  const triggered = new Set(special.map((r) => r.oid));
  const namesOf = new Map<string, string[]>();
  for (const r of found) if (r.oid !== null) namesOf.set(r.oid, [...(namesOf.get(r.oid) ?? []), r.name]);

  const out = new Map<string, TableFacts>();
  for (const r of found) {
    if (r.oid === null) continue;
    const seen = new Set<string>();
    const queue = [...(children.get(r.oid) ?? [])];
    for (let o = queue.shift(); o !== undefined; o = queue.shift()) {
      if (seen.has(o)) continue;
      seen.add(o);
      queue.push(...(children.get(o) ?? []));
    }
    out.set(r.name, {
      referenced: referenced.get(r.oid) ?? new Set(),
      descendants: new Set([...seen].flatMap((o) => namesOf.get(o) ?? [])),
      isolated: triggered.has(r.oid) || [...seen].some((o) => triggered.has(o)),
    });
  }
  return out;
}
