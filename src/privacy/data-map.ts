import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../errors.js';

/**
 * The data map: where personal data lives and what forget does to it. Loaded from YAML and
 * validated once at start-up; every table and column name in it is a checked identifier, so
 * the SQL built from it never contains anything that came from a request.
 */

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const identifier = z.string().regex(IDENTIFIER, 'must be an SQL identifier: a letter or _ then letters, digits or _ (at most 63)');
const tableName = z
  .string()
  .regex(/^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'must be a table name, optionally schema-qualified (schema.table)');
/** A column of the category's table, or `joined_table.column` for a column of a join. */
const columnRef = z.string().regex(/^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'must be a column name, or join_table.column');
const documentKey = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'must be a letter or _ then letters, digits or _');

/**
 * One step from a table towards the subject: `column` of the table before (the category's own
 * table for the first hop) references `references` of `table`. The last hop names the column
 * of its table that holds the subject id.
 */
const viaHop = z.strictObject({
  table: tableName,
  column: identifier.describe("the column of the previous table (the category's own for the first hop) that references this table"),
  references: identifier,
  subject_column: identifier.optional(),
});
type ViaHop = z.infer<typeof viaHop>;

const subjectRelation = z.union([
  z.strictObject({ column: identifier }),
  z.strictObject({ columns: z.array(identifier).min(1) }),
  // One hop as an object, or a path of several hops (invoice lines → invoices → customers).
  z.strictObject({ via: z.union([viaHop, z.array(viaHop).min(1).max(8)]).transform((v) => (Array.isArray(v) ? v : [v])) }),
]);

const join = z.strictObject({
  table: tableName,
  as: identifier.optional(),
  column: identifier,
  references: identifier,
});

const field = z.strictObject({ name: documentKey, column: columnRef });

/** Why a column (or a whole category) is kept: the only way to keep a text or JSON column of a subject's table. */
const keepReason = z.string().trim().min(1, 'say why it is kept');

const columnAction = z.union([
  z.literal('keep'),
  z.strictObject({ keep: keepReason }),
  z.literal('null'),
  z.null().transform(() => 'null' as const),
  z.literal('hash'),
  z.strictObject({ set: z.union([z.string(), z.number(), z.boolean()]) }),
  z.strictObject({ template: z.string().min(1) }),
  // JSON columns: every top-level key but these is removed (audit details keep their references).
  z.strictObject({ keep_keys: z.array(z.string().min(1)).default([]) }),
]);

/**
 * A field a person may rectify (Art. 16), by the name requests use (`email`), stored in a
 * column of the category's table. Values are checked by these rules before anything changes.
 */
const rectifyRule = z.strictObject({
  column: identifier.optional(),
  format: z.enum(['text', 'email', 'phone']).default('text'),
  max_length: z.number().int().positive().max(10_000).optional(),
  /** An ECMAScript regular expression the whole value must match. */
  pattern: z
    .string()
    .min(1)
    .refine((p) => {
      try {
        new RegExp(p, 'u');
        return true;
      } catch {
        return false;
      }
    }, 'must be a valid regular expression')
    .optional(),
});

const category = z.strictObject({
  name: identifier,
  description: z.string().optional(),
  table: tableName,
  subject: subjectRelation,
  joins: z.array(join).default([]),
  /** Columns never exported (password hashes, secrets, tokens). */
  secret: z.array(identifier).default([]),
  export: z
    .strictObject({
      shape: z.enum(['object', 'list']).default('list'),
      key: documentKey.optional(),
      fields: z.array(field).min(1),
      order_by: z.array(z.strictObject({ column: columnRef, direction: z.enum(['asc', 'desc']).default('asc') })).default([]),
      limit: z.number().int().positive().optional(),
      count_key: documentKey.optional(),
      /** Leave the key out of the document when the subject has no rows here (a list only). */
      omit_when_empty: z.boolean().default(false),
    })
    .optional(),
  forget: z.union([
    z.literal('delete'),
    z.literal('keep'),
    z.strictObject({ keep: keepReason }),
    z.strictObject({ columns: z.record(identifier, columnAction) }),
  ]),
  /** Fields rectification may change in this category's rows (field name → column and rules). */
  rectify: z.record(documentKey, rectifyRule).default({}),
});

const dataMapSchema = z.strictObject({
  /**
   * The purposes of processing a person may restrict, object to, or consent to (Art. 7, 18, 21),
   * e.g. marketing, analytics, profiling.
   */
  purposes: z.array(identifier).max(64).default([]),
  /** The table whose row is the subject: a missing row means "User not found". */
  subject: z.strictObject({ table: tableName, column: identifier }).optional(),
  categories: z.array(category).min(1),
  authorization: z
    .strictObject({
      platform_owner: z.strictObject({ table: tableName, subject_column: identifier, flag_column: identifier }),
      memberships: z.strictObject({
        table: tableName,
        subject_column: identifier,
        organization_column: identifier,
        role_column: identifier,
        owner_roles: z.array(z.string().min(1)).min(1),
        organization_label: z.strictObject({ table: tableName, column: identifier, references: identifier }),
      }),
    })
    .optional(),
  audit: z
    .strictObject({
      table: tableName,
      event_type_column: identifier,
      actor_column: identifier,
      target_column: identifier,
      details_column: identifier,
      timestamp_column: identifier,
    })
    .optional(),
});

export type DataMap = z.infer<typeof dataMapSchema>;
export type Category = DataMap['categories'][number];
export type SubjectRelation = Category['subject'];
export type ColumnAction = z.infer<typeof columnAction>;
export type RectifyRule = z.infer<typeof rectifyRule>;

export const DEFAULT_DATA_MAP_PATH = fileURLToPath(new URL('../../datamaps/identity.yaml', import.meta.url));

export async function loadDataMap(path: string): Promise<DataMap> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(
      `cannot read the data map (${(err as NodeJS.ErrnoException).code ?? String(err)}); set LETHE_DATA_MAP to a readable YAML file`,
      path,
      { cause: err },
    );
  }
  return parseDataMap(text, path);
}

/** One map with the categories of both (the server's export covers Lethe's own exported tables too). */
export function mergeDataMaps(map: DataMap, more: DataMap, source: string): DataMap {
  const merged = { ...map, categories: [...map.categories, ...more.categories] };
  checkConsistency(merged, source);
  return merged;
}

export function parseDataMap(text: string, source: string): DataMap {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(`not valid YAML: ${doc.errors[0]?.message ?? 'parse error'}`, source);
  }
  const parsed = dataMapSchema.safeParse(doc.toJS());
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const deepest = issue === undefined ? undefined : deepestIssue(issue);
    const where = deepest ? formatPath(deepest.path) : '(root)';
    throw new ConfigError(`${where}: ${deepest?.message ?? 'invalid'}`, source);
  }
  checkConsistency(parsed.data, source);
  return parsed.data;
}

/**
 * For a value that matches no alternative of a union (a forget action, a subject relation),
 * zod reports "Invalid input" at the union; the alternative that got furthest names the key.
 */
function deepestIssue(issue: z.core.$ZodIssue): { path: PropertyKey[]; message: string } {
  if (issue.code !== 'invalid_union' || issue.errors.length === 0) return { path: issue.path, message: issue.message };
  let best: { path: PropertyKey[]; message: string } = { path: issue.path, message: issue.message };
  let bestDepth = -1;
  for (const branch of issue.errors) {
    for (const inner of branch) {
      const d = deepestIssue(inner);
      const depth = d.path.length + (inner.code === 'invalid_type' || inner.code === 'invalid_value' ? 0 : 1);
      if (depth > bestDepth) {
        bestDepth = depth;
        best = { path: [...issue.path, ...d.path], message: d.message };
      }
    }
  }
  return best;
}

function formatPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(root)';
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
}

/** Rules that span keys, which the schema alone cannot express. */
function checkConsistency(map: DataMap, source: string): void {
  const fail = (where: string, message: string): never => {
    throw new ConfigError(`${where}: ${message}`, source);
  };
  const names = new Set<string>();
  const keys = new Set<string>();
  map.categories.forEach((c, i) => {
    const at = `categories[${i}] (${c.name})`;
    if (names.has(c.name)) fail(at, `duplicate category name '${c.name}'`);
    names.add(c.name);
    const joinNames = new Set(c.joins.map(joinAlias));
    const checkRef = (ref: string, where: string) => {
      const [qualifier] = splitColumnRef(ref);
      if (qualifier !== undefined && !joinNames.has(qualifier)) {
        fail(where, `'${ref}' names '${qualifier}', which is not one of this category's joins`);
      }
    };
    if (c.export) {
      const e = c.export;
      e.fields.forEach((f, j) => {
        checkRef(f.column, `${at}.export.fields[${j}]`);
        const [q, col] = splitColumnRef(f.column);
        if (q === undefined && c.secret.includes(col)) {
          fail(`${at}.export.fields[${j}]`, `column '${col}' is marked secret and is never exported`);
        }
      });
      const fieldNames = new Set<string>();
      for (const f of e.fields) {
        if (fieldNames.has(f.name)) fail(`${at}.export.fields`, `duplicate field name '${f.name}'`);
        fieldNames.add(f.name);
      }
      e.order_by.forEach((o, j) => checkRef(o.column, `${at}.export.order_by[${j}]`));
      if (e.shape === 'object') {
        if (e.limit !== undefined || e.count_key !== undefined || e.key !== undefined || e.omit_when_empty) {
          fail(`${at}.export`, "an 'object' category is merged into the top level: it takes no key, limit, count_key or omit_when_empty");
        }
        for (const f of e.fields) {
          if (keys.has(f.name)) fail(`${at}.export.fields`, `document key '${f.name}' is used twice`);
          keys.add(f.name);
        }
      } else {
        for (const k of [e.key ?? c.name, e.count_key]) {
          if (k === undefined) continue;
          if (keys.has(k)) fail(`${at}.export`, `document key '${k}' is used twice`);
          keys.add(k);
        }
      }
    }
    if ('via' in c.subject) {
      c.subject.via.forEach((hop, j) => {
        const last = j === (c.subject as { via: ViaHop[] }).via.length - 1;
        if (last && hop.subject_column === undefined)
          fail(`${at}.subject.via[${j}]`, 'the last hop needs subject_column: the column of its table that holds the subject id');
        if (!last && hop.subject_column !== undefined) fail(`${at}.subject.via[${j}].subject_column`, 'only the last hop names the subject column');
      });
    }
    for (const [col, action] of Object.entries(forgetColumns(c) ?? {})) {
      if (typeof action === 'object' && 'template' in action) {
        for (const m of action.template.matchAll(/\{([^}]*)\}/g)) {
          const name = m[1] ?? '';
          const column = /^column:(.*)$/.exec(name)?.[1];
          if (column !== undefined ? !IDENTIFIER.test(column) : !(TEMPLATE_PLACEHOLDERS as readonly string[]).includes(name)) {
            fail(
              `${at}.forget.columns.${col}.template`,
              `unknown placeholder {${name}}: use {timestamp}, {request_id} or {column:NAME} (a column of the same row)`,
            );
          }
        }
      }
      if (c.secret.includes(col) && isKeep(action)) {
        fail(`${at}.forget.columns.${col}`, 'a secret column cannot be kept by forget: use null, set, hash or delete the rows');
      }
    }
    const links = new Set(
      subjectLinks(c)
        .filter((l) => l.table === c.table)
        .map((l) => l.column),
    );
    for (const [name, rule] of Object.entries(c.rectify)) {
      const column = rule.column ?? name;
      if (!IDENTIFIER.test(column)) fail(`${at}.rectify.${name}`, `'${name}' is not a column name: give column`);
      if (c.secret.includes(column)) fail(`${at}.rectify.${name}`, `column '${column}' is secret: secrets are not rectified (reset them through the service)`);
      if (links.has(column)) fail(`${at}.rectify.${name}`, `column '${column}' links the rows to the subject and cannot be rectified`);
    }
  });
  const purposes = new Set<string>();
  for (const p of map.purposes) {
    if (purposes.has(p)) fail('purposes', `purpose '${p}' is listed twice`);
    purposes.add(p);
  }
}

/** Every field rectification may change, with the categories (and columns) holding it. */
export function rectifiableFields(map: DataMap): ReadonlyMap<string, ReadonlyArray<{ category: Category; column: string; rule: RectifyRule }>> {
  const out = new Map<string, Array<{ category: Category; column: string; rule: RectifyRule }>>();
  for (const c of map.categories) {
    for (const [name, rule] of Object.entries(c.rectify)) {
      const list = out.get(name) ?? [];
      list.push({ category: c, column: rule.column ?? name, rule });
      out.set(name, list);
    }
  }
  return out;
}

/** Placeholders a template may use besides {column:NAME}. */
const TEMPLATE_PLACEHOLDERS = ['timestamp', 'request_id'] as const;

/** The per-column forget actions of a category that updates its rows; undefined when it keeps or deletes them. */
export function forgetColumns(c: Category): Readonly<Record<string, ColumnAction>> | undefined {
  return typeof c.forget === 'object' && 'columns' in c.forget ? c.forget.columns : undefined;
}

/** Whether forget leaves the whole category as it is. */
export function keepsCategory(c: Category): boolean {
  return c.forget === 'keep' || (typeof c.forget === 'object' && 'keep' in c.forget);
}

export function isKeep(action: ColumnAction): action is 'keep' | { keep: string } {
  return action === 'keep' || (typeof action === 'object' && 'keep' in action);
}

/** The tables and columns a category's subject relation reads, in the order the SQL joins them. */
export function subjectLinks(c: Category): Array<{ table: string; column: string; role: 'subject' | 'link' | 'references' }> {
  const rel = c.subject;
  if ('column' in rel) return [{ table: c.table, column: rel.column, role: 'subject' }];
  if ('columns' in rel) return rel.columns.map((column) => ({ table: c.table, column, role: 'subject' as const }));
  const out: Array<{ table: string; column: string; role: 'subject' | 'link' | 'references' }> = [];
  let from = c.table;
  for (const hop of rel.via) {
    out.push({ table: from, column: hop.column, role: 'link' });
    out.push({ table: hop.table, column: hop.references, role: 'references' });
    if (hop.subject_column !== undefined) out.push({ table: hop.table, column: hop.subject_column, role: 'subject' });
    from = hop.table;
  }
  return out;
}

export function joinAlias(j: { table: string; as?: string | undefined }): string {
  return j.as ?? j.table.split('.').at(-1) ?? j.table;
}

/** `slug` → [undefined, 'slug']; `organizations.slug` → ['organizations', 'slug']. */
export function splitColumnRef(ref: string): [string | undefined, string] {
  const dot = ref.indexOf('.');
  return dot < 0 ? [undefined, ref] : [ref.slice(0, dot), ref.slice(dot + 1)];
}

export function documentKeyOf(c: Category): string {
  return c.export?.key ?? c.name;
}
