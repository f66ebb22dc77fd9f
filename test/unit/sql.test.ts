import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { type Category, DEFAULT_DATA_MAP_PATH, parseDataMap } from '../../src/privacy/data-map.js';
import { type ColumnTypes, countQuery, exportQuery, qualified, quoteIdent, subjectPredicate } from '../../src/privacy/sql.js';

const identity = parseDataMap(readFileSync(DEFAULT_DATA_MAP_PATH, 'utf8'), 'identity.yaml');

function category(name: string): Category {
  const c = identity.categories.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no category ${name} in the identity map`);
  return c;
}

/** Categories a downstream service might declare: a via relation and an OR over columns. */
const downstream = parseDataMap(
  `categories:
  - name: invoices
    table: billing.invoices
    subject:
      via: {table: billing.accounts, column: account_id, references: id, subject_column: user_id}
    export:
      fields:
        - {name: number, column: number}
        - {name: issued_at, column: issued_at}
      order_by: [{column: issued_at, direction: desc}]
      limit: 10
    forget: keep
  - name: transfers
    table: transfers
    subject: {columns: [sender_id, recipient_id]}
    export:
      fields:
        - {name: id, column: id}
    forget: keep
`,
  'downstream.yaml',
);
const invoices = downstream.categories[0] as Category;
const transfers = downstream.categories[1] as Category;

const NO_TYPES: ColumnTypes = new Map();

const HOSTILE_IDS = ['u-1', "x'); DROP TABLE users; --", 'a"b', "o'brien", 'id" OR 1=1 --', '$1', '?'];

describe('quoteIdent and qualified', () => {
  it.each([
    ['users', '"users"'],
    ['public.users', '"public"."users"'],
    ['_x9', '"_x9"'],
  ])('quoteIdent(%s) is %s', (name, quoted) => {
    expect(quoteIdent(name)).toBe(quoted);
  });

  it('qualifies a column with its table or alias', () => {
    expect(qualified('t', 'user_id')).toBe('"t"."user_id"');
  });
});

describe('subjectPredicate', () => {
  it('compares one column with a binding', () => {
    expect(subjectPredicate({ column: 'user_id' }, 't', 'u-1')).toEqual({ sql: '"t"."user_id" = ?', bindings: ['u-1'] });
  });

  it('ORs several columns, binding the subject once per column', () => {
    expect(subjectPredicate({ columns: ['actor_id', 'target_id'] }, 'audit_log', 'u-1')).toEqual({
      sql: '("audit_log"."actor_id" = ? OR "audit_log"."target_id" = ?)',
      bindings: ['u-1', 'u-1'],
    });
  });

  it('reaches the subject through a via table with a subquery', () => {
    expect(subjectPredicate({ via: [{ table: 'billing.accounts', column: 'account_id', references: 'id', subject_column: 'user_id' }] }, 't', 'u-1')).toEqual({
      sql: '"t"."account_id" IN (SELECT "lethe_via"."id" FROM "billing"."accounts" AS "lethe_via" WHERE "lethe_via"."user_id" = ?)',
      bindings: ['u-1'],
    });
  });

  it('follows a path of several hops, innermost first, binding the subject once', () => {
    const via = [
      { table: 'invoices', column: 'invoice_id', references: 'id' },
      { table: 'customers', column: 'customer_id', references: 'id', subject_column: 'user_id' },
    ];
    expect(subjectPredicate({ via }, 'invoice_lines', 'u-1')).toEqual({
      sql:
        '"invoice_lines"."invoice_id" IN (SELECT "lethe_via"."id" FROM "invoices" AS "lethe_via" WHERE "lethe_via"."customer_id" IN ' +
        '(SELECT "lethe_via1"."id" FROM "customers" AS "lethe_via1" WHERE "lethe_via1"."user_id" = ?))',
      bindings: ['u-1'],
    });
  });
});

describe('exportQuery', () => {
  it('builds the memberships query with its join, its projection rendered per row kept, and ORDER BY', () => {
    expect(exportQuery(category('memberships'), NO_TYPES, 'u-1')).toEqual({
      sql:
        'SELECT (SELECT row_to_json("x")::text FROM (SELECT "t"."organization_id" AS "organization_id", "organizations"."slug" AS "organization_slug", "t"."role" AS "role", "t"."joined_at" AS "joined_at") AS "x") AS "j" ' +
        'FROM "memberships" AS "t" LEFT JOIN "organizations" AS "organizations" ON "organizations"."id" = "t"."organization_id" ' +
        'WHERE "t"."user_id" = ? ORDER BY "t"."joined_at" ASC, "t"."organization_id" ASC',
      bindings: ['u-1'],
    });
  });

  it('takes LIMIT and descending order from the data map', () => {
    const q = exportQuery(category('login_events'), NO_TYPES, 'u-1');
    expect(q.sql.endsWith(' WHERE "t"."user_id" = ? ORDER BY "t"."timestamp" DESC, "t"."id" DESC LIMIT 50')).toBe(true);
    expect(q.bindings).toEqual(['u-1']);
  });

  it('leaves out ORDER BY and LIMIT when the map has none', () => {
    expect(exportQuery(transfers, NO_TYPES, 'u-1')).toEqual({
      sql: 'SELECT (SELECT row_to_json("x")::text FROM (SELECT "t"."id" AS "id") AS "x") AS "j" FROM "transfers" AS "t" WHERE ("t"."sender_id" = ? OR "t"."recipient_id" = ?)',
      bindings: ['u-1', 'u-1'],
    });
  });

  it('uses the via subquery for a schema-qualified table', () => {
    expect(exportQuery(invoices, NO_TYPES, 'u-1')).toEqual({
      sql:
        'SELECT (SELECT row_to_json("x")::text FROM (SELECT "t"."number" AS "number", "t"."issued_at" AS "issued_at") AS "x") AS "j" FROM "billing"."invoices" AS "t" ' +
        'WHERE "t"."account_id" IN (SELECT "lethe_via"."id" FROM "billing"."accounts" AS "lethe_via" WHERE "lethe_via"."user_id" = ?) ORDER BY "t"."issued_at" DESC LIMIT 10',
      bindings: ['u-1'],
    });
  });

  it('renders timestamps as UTC ISO text, with microseconds only when present', () => {
    const types: ColumnTypes = new Map([
      ['memberships', new Map([['joined_at', 'timestamp with time zone']])],
      ['organizations', new Map([['slug', 'text']])],
    ]);
    const q = exportQuery(category('memberships'), types, 'u-1');
    const ref = '"t"."joined_at"';
    expect(q.sql).toContain(
      `CASE WHEN date_trunc('second', ${ref}) = ${ref} THEN to_char(${ref} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') ` +
        `ELSE to_char(${ref} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END AS "joined_at"`,
    );
    expect(q.sql).toContain('"organizations"."slug" AS "organization_slug"');
  });

  it('does not shift a timestamp without time zone', () => {
    const types: ColumnTypes = new Map([['billing.invoices', new Map([['issued_at', 'timestamp without time zone']])]]);
    const q = exportQuery(invoices, types, 'u-1');
    expect(q.sql).toContain(
      `THEN to_char("t"."issued_at", 'YYYY-MM-DD"T"HH24:MI:SS"Z"') ELSE to_char("t"."issued_at", 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END AS "issued_at"`,
    );
    expect(q.sql).not.toContain('AT TIME ZONE');
  });

  it('refuses a category that is not exported', () => {
    expect(() => exportQuery(category('sessions'), NO_TYPES, 'u-1')).toThrow(new Error('category sessions is not exported'));
  });
});

describe('countQuery', () => {
  it('counts the subject rows of a category', () => {
    expect(countQuery(category('login_events'), 'u-1')).toEqual({
      sql: 'SELECT count(*)::bigint AS "n" FROM "login_events" AS "t" WHERE "t"."user_id" = ?',
      bindings: ['u-1'],
    });
  });

  it('counts over several subject columns', () => {
    expect(countQuery(category('audit_log'), 'u-1')).toEqual({
      sql: 'SELECT count(*)::bigint AS "n" FROM "audit_log" AS "t" WHERE ("t"."actor_id" = ? OR "t"."target_id" = ?)',
      bindings: ['u-1', 'u-1'],
    });
  });
});

describe('the subject id is only ever a binding', () => {
  const queries = (id: string) => [
    ...identity.categories.filter((c) => c.export !== undefined).map((c) => exportQuery(c, NO_TYPES, id)),
    ...identity.categories.map((c) => countQuery(c, id)),
    exportQuery(invoices, NO_TYPES, id),
    exportQuery(transfers, NO_TYPES, id),
    subjectPredicate(category('audit_log').subject, 'audit_log', id),
  ];

  it.each(HOSTILE_IDS)('%s', (id) => {
    const sqlTexts = queries('SENTINEL-never-in-sql').map((q) => q.sql);
    for (const [i, q] of queries(id).entries()) {
      // The SQL text does not depend on the id at all, and every binding is the id itself.
      expect(q.sql).toBe(sqlTexts[i]);
      expect(q.bindings.length).toBeGreaterThan(0);
      expect(q.bindings.every((b) => b === id)).toBe(true);
      expect(q.bindings.length).toBe(q.sql.split('?').length - 1);
    }
  });

  it('never contains a DROP TABLE or quote from the id', () => {
    const id = `x'); DROP TABLE users; --`;
    const q = countQuery(category('profile'), id);
    expect(q.sql).not.toContain('DROP TABLE');
    expect(q.sql).not.toContain("'");
    expect(q.bindings).toEqual([id]);
  });
});
