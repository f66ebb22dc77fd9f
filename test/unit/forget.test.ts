import { createHash, createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type DataMap, parseDataMap } from '../../src/privacy/data-map.js';
import { compileForget, forgetOrder, hmacPads } from '../../src/privacy/forget.js';
import type { ColumnTypes } from '../../src/privacy/sql.js';

const sha256 = (...parts: Buffer[]): Buffer => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

const map = (categories: string): DataMap => parseDataMap(`categories:\n${categories}`, 'test.yaml');
const types: ColumnTypes = new Map([
  [
    'users',
    new Map([
      ['id', 'text'],
      ['email', 'text'],
      ['details', 'jsonb'],
      ['notes', 'json'],
    ]),
  ],
]);

describe('compileForget', () => {
  const ctx = { timestamp: 1718445600000, requestId: 'req-7f3a' };
  const setOf = (action: string) => {
    const plan = compileForget(map(`  - {name: u, table: users, subject: {column: id}, forget: {columns: {email: ${action}}}}`), types, undefined);
    const set = plan.steps[0]?.set;
    return { sql: set?.sql, bindings: set?.bindings.map((b) => (typeof b === 'function' ? b(ctx) : b)) };
  };

  it.each([
    ['{template: "anonymized-{timestamp}@deleted.local"}', 'concat(?::text, ?::text, ?::text)', ['anonymized-', '1718445600000', '@deleted.local']],
    ['{template: "gone-{request_id}"}', 'concat(?::text, ?::text)', ['gone-', 'req-7f3a']],
    ['{template: "fixed text"}', 'concat(?::text)', ['fixed text']],
    // A value per row, for UNIQUE columns: the row's own id, read in SQL.
    ['{template: "anonymized-{column:id}@deleted.local"}', 'concat(?::text, "id"::text, ?::text)', ['anonymized-', '@deleted.local']],
    ['{set: "0.0.0.0"}', '?', ['0.0.0.0']],
    ['"null"', 'NULL', []],
  ])('%s → SET email = %s', (action, sql, bindings) => {
    expect(setOf(action)).toEqual({ sql: `"email" = ${sql}`, bindings });
  });

  it('keeps only the listed keys of a JSON column, and leaves kept columns out of the statement', () => {
    const plan = compileForget(
      map(
        '  - {name: u, table: users, subject: {column: id}, forget: {columns: {details: {keep_keys: [request_id]}, notes: {keep_keys: []}, email: {keep: "test"}}}}',
      ),
      types,
      undefined,
    );
    const set = plan.steps[0]?.set;
    expect(set?.sql).toContain(
      `"details" = CASE WHEN "details" IS NULL THEN NULL WHEN jsonb_typeof("details"::jsonb) = 'object' THEN (SELECT coalesce(jsonb_object_agg`,
    );
    expect(set?.sql).toContain(
      `"notes" = (CASE WHEN "notes" IS NULL THEN NULL WHEN jsonb_typeof("notes"::jsonb) = 'object' THEN '{}'::jsonb ELSE '{}'::jsonb END)::json`,
    );
    expect(set?.sql).not.toContain('"email"');
    expect(set?.bindings).toEqual(['request_id']);
  });

  it('drops categories that keep everything', () => {
    const plan = compileForget(
      map(
        '  - {name: u, table: users, subject: {column: id}, forget: {keep: "test"}}\n  - {name: s, table: sessions, subject: {column: user_id}, forget: delete}',
      ),
      types,
      undefined,
    );
    expect(plan.order).toEqual(['s']);
  });
});

describe('forgetOrder', () => {
  const order = (yaml: string) => forgetOrder(map(yaml)).map((c) => c.name);

  it('purges a table reached through another before that other is deleted', () => {
    expect(
      order(`  - {name: orders, table: orders, subject: {column: user_id}, forget: delete}
  - {name: lines, table: order_lines, subject: {via: {table: orders, column: order_id, references: id, subject_column: user_id}}, forget: delete}`),
    ).toEqual(['lines', 'orders']);
  });

  it('runs a via category before one that nulls the link it goes through, over several hops', () => {
    expect(
      order(`  - {name: customers, table: customers, subject: {column: user_id}, forget: {columns: {user_id: "null"}}}
  - {name: invoices, table: invoices, subject: {via: {table: customers, column: customer_id, references: id, subject_column: user_id}}, forget: {columns: {customer_id: "null"}}}
  - {name: lines, table: invoice_lines, subject: {via: [{table: invoices, column: invoice_id, references: id}, {table: customers, column: customer_id, references: id, subject_column: user_id}]}, forget: delete}`),
    ).toEqual(['lines', 'invoices', 'customers']);
  });

  it('keeps the map order where nothing forces another', () => {
    expect(
      order(`  - {name: a, table: a, subject: {column: user_id}, forget: delete}\n  - {name: b, table: b, subject: {column: user_id}, forget: delete}`),
    ).toEqual(['a', 'b']);
  });

  it('refuses two categories that each cut the link of the other', () => {
    expect(() =>
      order(`  - {name: a, table: a, subject: {via: {table: b, column: b_id, references: id, subject_column: user_id}}, forget: {columns: {user_id: "null"}}}
  - {name: b, table: b, subject: {via: {table: a, column: a_id, references: id, subject_column: user_id}}, forget: {columns: {user_id: "null"}}}`),
    ).toThrow('categories a, b: each deletes or changes what another');
  });
});

describe('hmacPads', () => {
  /** HMAC computed the way the SQL does: H((K ^ opad) || H((K ^ ipad) || m)). */
  function hmacWithPads(key: Buffer, message: Buffer): string {
    const { inner, outer } = hmacPads(key);
    return sha256(outer, sha256(inner, message)).toString('hex');
  }

  it.each([
    ['a 32-byte key', 32],
    ['a 64-byte key (one block)', 64],
    ['a 65-byte key', 65],
    ['a 100-byte key (hashed first)', 100],
    ['a 1-byte key', 1],
  ])('equals createHmac for %s', (_label, length) => {
    const key = randomBytes(length);
    for (const m of ['', 'alice@example.com', 'x'.repeat(1000), '10.0.0.1']) {
      const message = Buffer.from(m, 'utf8');
      expect(hmacWithPads(key, message)).toBe(createHmac('sha256', key).update(message).digest('hex'));
    }
  });

  it('matches RFC 4231 test case 2', () => {
    const key = Buffer.from('Jefe');
    expect(hmacWithPads(key, Buffer.from('what do ya want for nothing?'))).toBe('5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843');
  });

  it('pads a short key with zeros to one 64-byte block', () => {
    const key = Buffer.alloc(32, 0xff);
    const { inner, outer } = hmacPads(key);
    expect(inner.length).toBe(64);
    expect(outer.length).toBe(64);
    expect(inner.subarray(0, 32).every((b) => b === (0xff ^ 0x36))).toBe(true);
    expect(inner.subarray(32).every((b) => b === 0x36)).toBe(true);
    expect(outer.subarray(0, 32).every((b) => b === (0xff ^ 0x5c))).toBe(true);
    expect(outer.subarray(32).every((b) => b === 0x5c)).toBe(true);
  });

  it('hashes a key longer than the block before padding', () => {
    const key = randomBytes(100);
    const digest = sha256(key);
    const { inner } = hmacPads(key);
    expect(inner.subarray(0, 32)).toEqual(Buffer.from(digest.map((b) => b ^ 0x36)));
    expect(inner.subarray(32).every((b) => b === 0x36)).toBe(true);
  });
});
