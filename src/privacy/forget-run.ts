import type { Knex } from 'knex';
import type { TableRows } from '../store/ledger.js';
import type { Session } from '../store/session.js';
import { type ForgetPlan, type TemplateContext, forgetStatements } from './forget.js';
import { subjectPredicate } from './sql.js';

/**
 * A write that goes with a forget, in its transaction (the ledger entry, the audit entry, the
 * outbox event): an INSERT, or an UPDATE of columns no foreign key references in rows no step
 * changes. Its SQL may read the forget's rows_affected (a jsonb array) as ROWS_AFFECTED. It
 * joins the forget's last statement where the plan allows inserts into `table` there.
 */
export interface TrailingWrite {
  readonly table: string;
  readonly sql: string;
  readonly bindings: readonly Knex.RawBinding[];
}

/** The forget's rows_affected inside a trailing write: [{"table": …, "action": …, "rows": n}, …]. */
export const ROWS_AFFECTED = '(SELECT "rows" FROM "lethe_rows")';

/**
 * Applies a compiled forget in the session's transaction, then the trailing writes: as few
 * statements as the plan's groups allow (one for the default data map, writes included); with
 * `commit`, the transaction commits with the last. Categories that share a table add up; the
 * result lists each table once per action, in the order the statements ran (Lethe's own tables
 * only when rows changed).
 */
export async function applyForget(
  db: Session,
  plan: ForgetPlan,
  subjectId: string,
  ctx: TemplateContext,
  trailing: readonly TrailingWrite[] = [],
  options: { readonly commit?: boolean } = {},
): Promise<TableRows[]> {
  const c = compiled(plan);
  const bound = c.bindings(subjectId, ctx);
  const counts: number[] = plan.steps.map(() => 0);
  const joins = trailing.every((w) => plan.trailingInserts.has(w.table));
  for (const g of c.earlier) {
    const [rows] = await db.run([{ sql: g.sql, bindings: g.members.flatMap((i) => bound[i] ?? []) }]);
    const row = rows?.[0];
    for (const i of g.members) counts[i] = Number(row?.[`c${i}`] ?? 0);
  }
  const last = c.last;
  if (last === undefined) return applyWrites(db, [], trailing, options);
  const after = joins ? trailing : [];
  const [rows] = await db.run(
    [
      {
        sql: last.sql(after),
        bindings: [
          ...last.members.flatMap((i) => bound[i] ?? []),
          ...plan.steps.flatMap((_, i) => (last.members.includes(i) ? [] : [counts[i] ?? 0])),
          ...last.rowsBindings,
          ...after.flatMap((w) => w.bindings),
        ],
      },
    ],
    { commit: options.commit === true && (joins || trailing.length === 0) },
  );
  const result = tableRows(rows?.[0]?.rows);
  return joins ? result : applyWrites(db, result, trailing, options);
}

/** Trailing writes in a statement of their own, given the rows affected (a subject erased before: none). */
export async function applyWrites(
  db: Session,
  rows: TableRows[],
  trailing: readonly TrailingWrite[],
  options: { readonly commit?: boolean } = {},
): Promise<TableRows[]> {
  if (trailing.length === 0) return rows;
  const sql = `WITH "lethe_rows" AS (SELECT ?::jsonb AS "rows"), ${trailing.map((w, k) => `"lethe_w${k}" AS (${w.sql})`).join(', ')} SELECT 1 AS "done"`;
  await db.run([{ sql, bindings: [JSON.stringify(rows), ...trailing.flatMap((w) => w.bindings)] }], options);
  return rows;
}

/** A plan's statements, built once: the SQL never changes, only the values. */
interface Compiled {
  /** Each step's values for a subject. */
  bindings(subjectId: string, ctx: TemplateContext): Knex.RawBinding[][];
  /** Groups before the last: each a statement that returns the counts "c<step>" of its steps. */
  readonly earlier: ReadonlyArray<{ readonly members: readonly number[]; readonly sql: string }>;
  /** The last group: its steps, the counts of all, rows_affected and the trailing writes. */
  readonly last: { readonly members: readonly number[]; readonly rowsBindings: readonly string[]; sql(after: readonly TrailingWrite[]): string } | undefined;
}

const plans = new WeakMap<ForgetPlan, Compiled>();

function compiled(plan: ForgetPlan): Compiled {
  const known = plans.get(plan);
  if (known !== undefined) return known;
  // The SQL does not depend on the subject: built with a stand-in, each value bound per call.
  const statements = forgetStatements(plan, '', { timestamp: 0, requestId: '' });
  const part = (i: number) => `"s${i}" AS (${statements[i]?.sql ?? ''} RETURNING 1)`;
  const earlier = plan.groups.slice(0, -1).map((members) => ({
    members,
    sql: `WITH ${members.map(part).join(', ')} SELECT ${members.map((i) => `(SELECT count(*) FROM "s${i}") AS "c${i}"`).join(', ')}`,
  }));
  const members = plan.groups.at(-1);
  let last: Compiled['last'];
  if (members !== undefined) {
    const counts = plan.steps.map((_, i) => (members.includes(i) ? `(SELECT count(*) FROM "s${i}") AS "c${i}"` : `?::bigint AS "c${i}"`));
    const rows = rowsAffectedSql(plan);
    const prefix = `WITH ${[...members.map(part), `"lethe_counts" AS (SELECT ${counts.join(', ')})`, `"lethe_rows" AS (${rows.sql})`].join(', ')}`;
    // By the trailing writes' SQL, so that a forget's statement is the same string each time.
    const texts = new Map<string, string>();
    last = {
      members,
      rowsBindings: rows.bindings,
      sql(after) {
        const key = after.map((w) => w.sql).join('\u0000');
        let text = texts.get(key);
        if (text === undefined) {
          text = `${prefix}${after.map((w, k) => `, "lethe_w${k}" AS (${w.sql})`).join('')} SELECT "rows" FROM "lethe_rows"`;
          if (texts.size < 16) texts.set(key, text);
        }
        return text;
      },
    };
  }
  // Each step's values as forgetStatements binds them: the SET list's, then the subject id as often as its predicate reads it.
  const shapes = plan.steps.map((step) => ({
    set: step.action === 'delete' ? [] : (step.set?.bindings ?? []),
    subjects: subjectPredicate(step.category.subject, step.category.table, '').bindings.length,
  }));
  const c: Compiled = {
    earlier,
    last,
    bindings: (subjectId, ctx) =>
      shapes.map((s) => [...s.set.map((b) => (typeof b === 'function' ? b(ctx) : b)), ...Array.from({ length: s.subjects }, () => subjectId)]),
  };
  plans.set(plan, c);
  return c;
}

/**
 * rows_affected from the counts "c<step>" in "lethe_counts": one entry per table and action, in
 * the order of the first step that reported it; a step of Lethe's own tables reports only rows.
 */
function rowsAffectedSql(plan: ForgetPlan): { sql: string; bindings: string[] } {
  const entries: Array<{ table: string; action: string; members: number[] }> = [];
  plan.steps.forEach((s, i) => {
    const e = entries.find((x) => x.table === s.category.table && x.action === s.action);
    if (e === undefined) entries.push({ table: s.category.table, action: s.action, members: [i] });
    else e.members.push(i);
  });
  if (entries.length === 0) return { sql: `SELECT '[]'::jsonb AS "rows"`, bindings: [] };
  const c = (i: number) => `"lethe_counts"."c${i}"`;
  const values = entries.map((e) => {
    const sum = e.members.map(c).join(' + ');
    const keys = e.members.map((i) => (plan.steps[i]?.reportWhenZero === false ? `CASE WHEN ${c(i)} > 0 THEN ${i} END` : String(i)));
    return `(?::text, ?::text, (${sum})::bigint, ${keys.length === 1 ? keys[0] : `LEAST(${keys.join(', ')})`})`;
  });
  return {
    sql:
      `SELECT coalesce(jsonb_agg(jsonb_build_object('table', "v"."t", 'action', "v"."a", 'rows', "v"."n") ORDER BY "v"."k"), '[]'::jsonb) AS "rows"` +
      ` FROM "lethe_counts" CROSS JOIN LATERAL (VALUES ${values.join(', ')}) AS "v"("t", "a", "n", "k") WHERE "v"."k" IS NOT NULL`,
    bindings: entries.flatMap((e) => [e.table, e.action]),
  };
}

/** rows_affected as the database returned it (jsonb: parsed by the driver; text otherwise). */
function tableRows(value: unknown): TableRows[] {
  const list = (typeof value === 'string' ? JSON.parse(value) : value) as Array<{ table: string; action: 'update' | 'delete'; rows: number | string }> | null;
  return (list ?? []).map((r) => ({ table: r.table, action: r.action, rows: Number(r.rows) }));
}
