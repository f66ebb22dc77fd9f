import { createHash } from 'node:crypto';
import type { Knex } from 'knex';
import type { TableRows } from '../store/ledger.js';
import type { Category, ColumnAction, DataMap } from './data-map.js';
import { subjectPredicate } from './sql.js';

/** Values a template may use: `anonymized-{timestamp}@deleted.local`. */
export interface TemplateContext {
  /** Milliseconds since the epoch when the forget ran. */
  readonly timestamp: number;
  readonly requestId: string;
}

export const TEMPLATE_PLACEHOLDERS = ['timestamp', 'request_id'] as const;

export function renderTemplate(template: string, ctx: TemplateContext): string {
  return template.replace(/\{(timestamp|request_id)\}/g, (_, name: string) => (name === 'timestamp' ? String(ctx.timestamp) : ctx.requestId));
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

function assignment(db: Knex.Transaction, column: string, action: Exclude<ColumnAction, 'keep'>, ctx: TemplateContext, hashKey: Buffer | undefined): unknown {
  if (action === 'null') return null;
  if (action === 'hash') {
    if (hashKey === undefined) throw new Error('the data map uses hash but no hash key is configured');
    const { inner, outer } = hmacPads(hashKey);
    return db.raw(`encode(sha256(?::bytea || sha256(?::bytea || convert_to(??::text, 'UTF8'))), 'hex')`, [outer, inner, column]);
  }
  if ('set' in action) return action.set;
  return renderTemplate(action.template, ctx);
}

/** knex's pg client returns a count for delete; knex-pglite returns the driver's result object. */
function affectedRows(result: unknown): number {
  if (typeof result === 'number') return result;
  const r = result as { rowCount?: unknown; affectedRows?: unknown };
  return Number(r.rowCount ?? r.affectedRows ?? 0);
}

/** Applies one category's forget action to the subject's rows; returns what it changed. */
async function forgetCategory(db: Knex.Transaction, c: Category, subjectId: string, ctx: TemplateContext, hashKey: Buffer | undefined): Promise<TableRows | undefined> {
  if (c.forget === 'keep') return undefined;
  const where = subjectPredicate(c.subject, c.table, subjectId);
  if (c.forget === 'delete') {
    const rows = affectedRows(await db(c.table).whereRaw(where.sql, where.bindings).delete());
    return { table: c.table, action: 'delete', rows };
  }
  const changes: Record<string, unknown> = {};
  for (const [column, action] of Object.entries(c.forget.columns)) {
    if (action !== 'keep') changes[column] = assignment(db, column, action, ctx, hashKey);
  }
  if (Object.keys(changes).length === 0) return undefined;
  const rows = await db(c.table).whereRaw(where.sql, where.bindings).update(changes);
  return { table: c.table, action: 'update', rows };
}

/**
 * Applies the forget half of the data map inside the caller's transaction. Categories that
 * share a table add up; the result lists each table once per action, in data map order.
 */
export async function applyForget(db: Knex.Transaction, map: DataMap, subjectId: string, ctx: TemplateContext, hashKey: Buffer | undefined): Promise<TableRows[]> {
  const out: TableRows[] = [];
  for (const c of map.categories) {
    const r = await forgetCategory(db, c, subjectId, ctx, hashKey);
    if (r === undefined) continue;
    const same = out.findIndex((o) => o.table === r.table && o.action === r.action);
    if (same >= 0) {
      const prev = out[same];
      if (prev !== undefined) out[same] = { ...prev, rows: prev.rows + r.rows };
    } else out.push(r);
  }
  return out;
}

/** Whether the data map uses hash anywhere (then a hash key must be configured). */
export function usesHash(map: DataMap): boolean {
  return map.categories.some((c) => typeof c.forget === 'object' && Object.values(c.forget.columns).some((a) => a === 'hash'));
}
