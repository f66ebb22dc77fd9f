import { createHash } from 'node:crypto';
import type { Knex } from 'knex';
import { ConfigError } from '../errors.js';
import { type Category, type ColumnAction, type DataMap, forgetColumns, isKeep, keepsCategory, subjectLinks } from './data-map.js';
import { type ForgetGroups, separateSteps } from './forget-groups.js';
import { type ColumnTypes, quoteIdent, subjectPredicate } from './sql.js';

/** Values a template may use: `anonymized-{timestamp}@deleted.local`. */
export interface TemplateContext {
  /** Milliseconds since the epoch when the forget ran. */
  readonly timestamp: number;
  readonly requestId: string;
}

/**
 * HMAC-SHA256 in plain SQL (no pgcrypto, so PGlite runs it too): with the key's inner and
 * outer pads bound as parameters, H((K ^ opad) || H((K ^ ipad) || value)).
 */
export function hmacPads(key: Buffer): { inner: Buffer; outer: Buffer } {
  const block = Buffer.alloc(64);
  (key.length > 64 ? createHash('sha256').update(key).digest() : key).copy(block);
  const inner = Buffer.alloc(64);
  const outer = Buffer.alloc(64);
  for (let i = 0; i < 64; i++) {
    inner[i] = (block[i] ?? 0) ^ 0x36;
    outer[i] = (block[i] ?? 0) ^ 0x5c;
  }
  return { inner, outer };
}

type Binding = Knex.RawBinding | ((ctx: TemplateContext) => Knex.RawBinding);

/** One statement of a forget: SQL with `?` for the values, built once per data map. */
export interface ForgetStep {
  readonly category: Category;
  readonly action: 'update' | 'delete';
  /** Reported in rows_affected even when it matched no rows (Lethe's own tables are not). */
  readonly reportWhenZero?: boolean;
  /** The SET list (update) with its bindings; the subject predicate is added per call. */
  readonly set: { readonly sql: string; readonly bindings: readonly Binding[] } | undefined;
}

/** The forget half of a data map, compiled once: the statements in the order they must run. */
export interface ForgetPlan extends ForgetGroups {
  readonly steps: readonly ForgetStep[];
  /** Categories in the order their statements run (for start-up logs and tests). */
  readonly order: readonly string[];
}

/** Whether the data map uses hash anywhere (then a hash key must be configured). */
export function usesHash(map: DataMap): boolean {
  return map.categories.some((c) => Object.values(forgetColumns(c) ?? {}).some((a) => a === 'hash'));
}

/**
 * Orders the categories so that every one runs before any category that deletes or changes
 * the rows or columns its subject relation reads: a table reached through another (`via`) is
 * purged while the link to the subject still exists. Map order is kept where nothing forces
 * another; a cycle (two categories each cutting the other's link) makes the map unusable.
 */
export function forgetOrder(map: DataMap, source = 'data map'): Category[] {
  const cats = map.categories.filter((c) => !keepsCategory(c));
  const writes = (c: Category, table: string, column: string): boolean => {
    if (c.table !== table) return false;
    if (c.forget === 'delete') return true;
    const action = forgetColumns(c)?.[column];
    return action !== undefined && !isKeep(action);
  };
  const before = cats.map(() => new Set<number>());
  cats.forEach((reader, r) => {
    cats.forEach((writer, w) => {
      if (r === w) return;
      // Two categories deleting from one table cut nothing the other needs.
      if (reader.table === writer.table && reader.forget === 'delete' && writer.forget === 'delete') return;
      if (subjectLinks(reader).some((l) => writes(writer, l.table, l.column))) before[w]?.add(r);
    });
  });
  const done = new Set<number>();
  const out: Category[] = [];
  while (out.length < cats.length) {
    const next = cats.findIndex((_, i) => !done.has(i) && [...(before[i] ?? [])].every((r) => done.has(r)));
    if (next < 0) {
      const stuck = cats.filter((_, i) => !done.has(i)).map((c) => c.name);
      throw new ConfigError(
        `categories ${stuck.join(', ')}: each deletes or changes what another's subject relation goes through, so no order erases them all; link them through columns forget keeps`,
        source,
      );
    }
    done.add(next);
    const c = cats[next];
    if (c !== undefined) out.push(c);
  }
  return out;
}

function assignment(
  column: string,
  action: Exclude<ColumnAction, 'keep' | { keep: string }>,
  type: string | undefined,
  hashKey: Buffer | undefined,
): { sql: string; bindings: Binding[] } {
  const col = quoteIdent(column);
  if (action === 'null') return { sql: 'NULL', bindings: [] };
  if (action === 'hash') {
    if (hashKey === undefined) throw new Error('the data map uses hash but no hash key is configured');
    const { inner, outer } = hmacPads(hashKey);
    return { sql: `encode(sha256(?::bytea || sha256(?::bytea || convert_to(${col}::text, 'UTF8'))), 'hex')`, bindings: [outer, inner] };
  }
  if ('set' in action) return { sql: '?', bindings: [action.set] };
  if ('keep_keys' in action) {
    const keys = action.keep_keys;
    const kept =
      keys.length === 0
        ? "'{}'::jsonb"
        : `(SELECT coalesce(jsonb_object_agg("k"."key", "k"."value"), '{}'::jsonb) FROM jsonb_each(${col}::jsonb) AS "k" WHERE "k"."key" IN (${keys.map(() => '?').join(', ')}))`;
    // Non-object JSON (a string, an array) holds no reference worth keeping.
    const expr = `CASE WHEN ${col} IS NULL THEN NULL WHEN jsonb_typeof(${col}::jsonb) = 'object' THEN ${kept} ELSE '{}'::jsonb END`;
    return { sql: type === 'json' ? `(${expr})::json` : expr, bindings: [...keys] };
  }
  // A template: literal parts bound, {column:NAME} read from the row itself.
  const parts: string[] = [];
  const bindings: Binding[] = [];
  let last = 0;
  for (const m of action.template.matchAll(/\{(timestamp|request_id|column:[A-Za-z_][A-Za-z0-9_]*)\}/g)) {
    const literal = action.template.slice(last, m.index);
    if (literal !== '') {
      parts.push('?::text');
      bindings.push(literal);
    }
    const name = m[1] ?? '';
    if (name === 'timestamp') {
      parts.push('?::text');
      bindings.push((ctx) => String(ctx.timestamp));
    } else if (name === 'request_id') {
      parts.push('?::text');
      bindings.push((ctx) => ctx.requestId);
    } else parts.push(`${quoteIdent(name.slice('column:'.length))}::text`);
    last = m.index + m[0].length;
  }
  const rest = action.template.slice(last);
  if (rest !== '' || parts.length === 0) {
    parts.push('?::text');
    bindings.push(rest);
  }
  return { sql: `concat(${parts.join(', ')})`, bindings };
}

/** Compiles the forget half of a data map (checked against the database: `types`). */
export function compileForget(map: DataMap, types: ColumnTypes, hashKey: Buffer | undefined, source?: string): ForgetPlan {
  const order = forgetOrder(map, source);
  const steps = order.map((c): ForgetStep => {
    if (c.forget === 'delete') return { category: c, action: 'delete', set: undefined };
    const sets: string[] = [];
    const bindings: Binding[] = [];
    for (const [column, action] of Object.entries(forgetColumns(c) ?? {})) {
      if (isKeep(action)) continue;
      const a = assignment(column, action, types.get(c.table)?.get(column), hashKey);
      sets.push(`${quoteIdent(column)} = ${a.sql}`);
      bindings.push(...a.bindings);
    }
    return { category: c, action: 'update', set: sets.length === 0 ? undefined : { sql: sets.join(', '), bindings } };
  });
  const kept = steps.filter((s) => s.action === 'delete' || s.set !== undefined);
  return { steps: kept, order: order.map((c) => c.name), ...separateSteps(kept) };
}

/** knex's pg client reports rowCount; knex-pglite the driver's affectedRows. */
export function affectedRows(result: unknown): number {
  if (typeof result === 'number') return result;
  const r = result as { rowCount?: unknown; affectedRows?: unknown };
  return Number(r.rowCount ?? r.affectedRows ?? 0);
}

/** A forget's statements for one subject, in the order they run, with their values bound. */
export function forgetStatements(
  plan: ForgetPlan,
  subjectId: string,
  ctx: TemplateContext,
): Array<{ step: ForgetStep; sql: string; bindings: Knex.RawBinding[] }> {
  return plan.steps.map((step) => {
    const c = step.category;
    const where = subjectPredicate(c.subject, c.table, subjectId);
    const sql =
      step.action === 'delete'
        ? `DELETE FROM ${quoteIdent(c.table)} WHERE ${where.sql}`
        : `UPDATE ${quoteIdent(c.table)} SET ${step.set?.sql ?? ''} WHERE ${where.sql}`;
    const bound = (step.set?.bindings ?? []).map((b) => (typeof b === 'function' ? b(ctx) : b));
    return { step, sql, bindings: [...(step.action === 'delete' ? [] : bound), ...where.bindings] };
  });
}
