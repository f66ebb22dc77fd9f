import type { Knex } from 'knex';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import type { TableRows } from '../store/ledger.js';
import { type Category, type DataMap, type RectifyRule, rectifiableFields } from './data-map.js';
import { affectedRows } from './forget.js';
import { quoteIdent, subjectPredicate } from './sql.js';

/**
 * Rectification (Art. 16) as a data map declares it: each field a request may change, the
 * columns that hold it and the rules its new value must pass. The server applies it to its own
 * tables and each sidecar to its service's, with the same rules, so copies never diverge on a
 * value one side would refuse. Messages name fields and rules, never values.
 */

const FIELD_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
/** At most this many fields change in one request. */
const MAX_FIELDS = 32;

const DEFAULT_MAX_LENGTH: Readonly<Record<RectifyRule['format'], number>> = { text: 256, email: 254, phone: 32 };
const FORMATS: Readonly<Record<RectifyRule['format'], { test: RegExp; says: string } | undefined>> = {
  text: undefined,
  // The practical shape (something@domain.tld); whether it is deliverable is the service's business.
  email: { test: /^[^\s@]+@[^\s@.]+(\.[^\s@.]+)+$/u, says: 'must be an email address (name@domain.tld)' },
  phone: { test: /^\+?[0-9][0-9 ().-]{3,31}$/u, says: 'must be a phone number (digits, spaces, + ( ) . -)' },
};
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/u;

interface Target {
  readonly category: Category;
  readonly column: string;
  readonly rule: RectifyRule;
  readonly pattern: RegExp | undefined;
}

export interface RectifyPlan {
  /** Field name → every column holding it, in data map order. */
  readonly fields: ReadonlyMap<string, readonly Target[]>;
}

export function compileRectify(map: DataMap): RectifyPlan {
  const fields = new Map<string, Target[]>();
  for (const [name, targets] of rectifiableFields(map)) {
    fields.set(
      name,
      targets.map((t) => ({ ...t, pattern: t.rule.pattern === undefined ? undefined : new RegExp(`^(?:${t.rule.pattern})$`, 'u') })),
    );
  }
  return { fields };
}

/** Why a value fails a field's rule (safe to show: it names the rule), or undefined. */
function ruleFailure(t: Target, value: string): string | undefined {
  const max = t.rule.max_length ?? DEFAULT_MAX_LENGTH[t.rule.format];
  if (value.trim().length === 0) return 'must not be empty';
  if ([...value].length > max) return `must be at most ${max} characters`;
  if (CONTROL.test(value)) return 'must not contain control characters';
  const format = FORMATS[t.rule.format];
  if (format !== undefined && !format.test.test(value)) return format.says;
  if (t.pattern !== undefined && !t.pattern.test(value)) return `must match the data map's pattern for ${t.category.name}.${t.column}`;
  return undefined;
}

/**
 * Checks a request's changes against the server's data map: every field must be rectifiable
 * and every value pass each of its columns' rules. Returns the changes in a stable order.
 */
export function checkRequestedChanges(plan: RectifyPlan, changes: Readonly<Record<string, string>>): Array<[string, string]> {
  const entries = Object.entries(changes).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (entries.length === 0) throw new InvalidArgumentError('changes is required: give at least one field and its new value');
  if (entries.length > MAX_FIELDS) throw new InvalidArgumentError(`changes may name at most ${MAX_FIELDS} fields`);
  const known = [...plan.fields.keys()].sort();
  for (const [name, value] of entries) {
    if (!FIELD_NAME.test(name)) throw new InvalidArgumentError('changes names a field that is not a field name (letters, digits, _)');
    const targets = plan.fields.get(name);
    if (targets === undefined) {
      throw new InvalidArgumentError(
        known.length === 0 ? 'the data map declares no rectifiable fields' : `unknown field '${name}': rectifiable fields are ${known.join(', ')}`,
      );
    }
    for (const t of targets) {
      const why = ruleFailure(t, value);
      if (why !== undefined) throw new InvalidArgumentError(`${name}: ${why}`);
    }
  }
  return entries;
}

/** A change this data map's rules refuse (a sidecar's own stricter rules): permanent, never retried. */
export class ChangeRefused extends Error {
  override readonly name = 'ChangeRefused';
}

/**
 * Applies new values to every column of this data map that holds one of the fields, in the
 * caller's transaction: one UPDATE per category. Fields this map does not hold are skipped (the
 * service keeps no copy of them). Constraint violations become a FailedPreconditionError naming
 * the fields, never the values.
 */
export async function applyRectify(trx: Knex.Transaction, plan: RectifyPlan, subjectId: string, values: ReadonlyArray<[string, string]>): Promise<TableRows[]> {
  const perCategory = new Map<Category, Array<{ field: string; column: string; value: string }>>();
  for (const [field, value] of values) {
    for (const t of plan.fields.get(field) ?? []) {
      const why = ruleFailure(t, value);
      if (why !== undefined) throw new ChangeRefused(`${field}: ${why}`);
      const list = perCategory.get(t.category) ?? [];
      list.push({ field, column: t.column, value });
      perCategory.set(t.category, list);
    }
  }
  const out: TableRows[] = [];
  for (const [c, sets] of perCategory) {
    const where = subjectPredicate(c.subject, c.table, subjectId);
    const sql = `UPDATE ${quoteIdent(c.table)} SET ${sets.map((s) => `${quoteIdent(s.column)} = ?`).join(', ')} WHERE ${where.sql}`;
    let rows: number;
    try {
      rows = affectedRows(await trx.raw(sql, [...sets.map((s) => s.value), ...where.bindings]));
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      const fields = [...new Set(sets.map((s) => s.field))].join(', ');
      if (code === '23505')
        throw new FailedPreconditionError(`The new value of ${fields} is already used by another record (${c.table}); nothing was changed`, { cause: err });
      if (typeof code === 'string' && code.startsWith('23'))
        throw new FailedPreconditionError(`The new value of ${fields} breaks a constraint of ${c.table}; nothing was changed`, { cause: err });
      throw err;
    }
    const prev = out.find((o) => o.table === c.table);
    if (prev === undefined) out.push({ table: c.table, action: 'update', rows });
    else out[out.indexOf(prev)] = { ...prev, rows: prev.rows + rows };
  }
  return out;
}
