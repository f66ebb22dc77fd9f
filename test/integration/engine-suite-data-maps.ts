import { createHmac } from 'node:crypto';
import { beforeAll, expect, it } from 'vitest';
import { parseDataMap } from '../../src/privacy/data-map.js';
import { prepareServerDataMap } from '../../src/privacy/lethe-tables.js';
import { checkDataMapAgainstDatabase } from '../../src/privacy/schema-check.js';
import type { Database } from '../../src/store/database.js';
import { collectExport, never } from '../support/engine-fixture.js';

/**
 * Part of the engine suite (engine-suite.ts), in its describe and on its database: data maps of
 * schemas other than the identity one, and the start-up check of a map against the database.
 * `slug` makes names unique per database kind.
 */
export function engineDataMapTests(database: () => Database, slug: string): void {
  let db: Database;
  beforeAll(() => {
    db = database();
  });

  it('drives any schema from its data map: via relations, hash, template, set, null and delete', async () => {
    const k = db.knex;
    await k.raw(`CREATE TABLE shop_customers (id text PRIMARY KEY, name text, email text)`);
    await k.raw(`CREATE TABLE shop_orders (id text PRIMARY KEY, customer_id text, total_cents integer, placed_at timestamptz, note text)`);
    await k.raw(`CREATE TABLE shop_addresses (id text PRIMARY KEY, order_id text, street text, city text)`);
    await k('shop_customers').insert([
      { id: 'c1', name: 'Ada', email: 'ada@example.com' },
      { id: 'c2', name: 'Bob', email: 'bob@example.com' },
    ]);
    await k('shop_orders').insert([
      { id: 'o1', customer_id: 'c1', total_cents: 1200, placed_at: new Date('2025-03-01T12:00:00.250Z'), note: 'ring twice' },
      { id: 'o2', customer_id: 'c1', total_cents: 300, placed_at: new Date('2025-03-02T12:00:00Z'), note: null },
      { id: 'o3', customer_id: 'c2', total_cents: 999, placed_at: new Date('2025-03-03T12:00:00Z'), note: 'keep me' },
    ]);
    await k('shop_addresses').insert([
      { id: 'a1', order_id: 'o1', street: '1 Main St', city: 'Paris' },
      { id: 'a2', order_id: 'o3', street: '2 Side St', city: 'Rome' },
    ]);
    const map = parseDataMap(
      `
subject: {table: shop_customers, column: id}
categories:
  - name: customer
    table: shop_customers
    subject: {column: id}
    export: {shape: object, fields: [{name: customer_id, column: id}, {name: name, column: name}]}
    forget: {columns: {name: hash, email: {template: "gone-{request_id}@invalid"}}}
  - name: orders
    table: shop_orders
    subject: {column: customer_id}
    export:
      fields: [{name: id, column: id}, {name: total_cents, column: total_cents}, {name: placed_at, column: placed_at}]
      order_by: [{column: placed_at, direction: desc}]
    forget: {columns: {note: "null", total_cents: {set: 0}}}
  - name: addresses
    table: shop_addresses
    subject: {via: {table: shop_orders, column: order_id, references: id, subject_column: customer_id}}
    export: {fields: [{name: street, column: street}, {name: city, column: city}]}
    forget: delete
`,
      'shop.yaml',
    );
    const key = Buffer.alloc(32, 7);
    const { columnTypes, forgetPlan } = await prepareServerDataMap(k, map, 'shop.yaml', key);
    const { PrivacyEngine } = await import('../../src/privacy/engine.js');
    const { silentLogger } = await import('../support/engine-fixture.js');
    const shop = new PrivacyEngine({ knex: k, dataMap: map, columnTypes, forgetPlan, logger: silentLogger });

    const { doc } = await collectExport(shop.exportUser({ id: 'svc', role: 'platform' }, { userId: 'c1', reason: '' }, never));
    expect(doc).toEqual({
      customer_id: 'c1',
      name: 'Ada',
      orders: [
        { id: 'o2', total_cents: 300, placed_at: '2025-03-02T12:00:00Z' },
        { id: 'o1', total_cents: 1200, placed_at: '2025-03-01T12:00:00.250000Z' },
      ],
      addresses: [{ street: '1 Main St', city: 'Paris' }],
    });

    const r = await shop.forgetUser({ id: 'svc', role: 'platform' }, { userId: 'c1', reason: 'erasure', idempotencyKey: `shop-${slug}` });
    expect(r.rowsAffected).toEqual([
      { table: 'shop_customers', action: 'update', rows: 1 },
      { table: 'shop_orders', action: 'update', rows: 2 },
      { table: 'shop_addresses', action: 'delete', rows: 1 },
    ]);
    expect(await k('shop_customers').orderBy('id')).toEqual([
      { id: 'c1', name: createHmac('sha256', key).update('Ada').digest('hex'), email: `gone-${r.requestId}@invalid` },
      { id: 'c2', name: 'Bob', email: 'bob@example.com' },
    ]);
    expect(await k('shop_orders').orderBy('id').select('id', 'total_cents', 'note')).toEqual([
      { id: 'o1', total_cents: 0, note: null },
      { id: 'o2', total_cents: 0, note: null },
      { id: 'o3', total_cents: 999, note: 'keep me' },
    ]);
    expect(await k('shop_addresses').pluck('id')).toEqual(['a2']);
  });

  it('refuses a map that leaves a text or JSON column undeclared, naming the table and column', async () => {
    const map = (forget: string) =>
      parseDataMap(`categories: [{name: logins, table: login_events, subject: {column: user_id}, forget: ${forget}}]`, 'partial.yaml');
    await expect(checkDataMapAgainstDatabase(db.knex, map('{columns: {ip_address: "null", user_agent: "null"}}'), 'partial.yaml')).rejects.toThrow(
      "partial.yaml: categories.logins: column 'provider' of table 'login_events' (text) is not declared",
    );
    await expect(
      checkDataMapAgainstDatabase(
        db.knex,
        map('{columns: {ip_address: "null", user_agent: "null", provider: keep, risk_factors: "null", geo_country: "null", geo_city: "null"}}'),
        'partial.yaml',
      ),
    ).rejects.toThrow("partial.yaml: categories.logins.forget.columns.provider: column 'provider' of table 'login_events' is kept without a reason");
    await expect(checkDataMapAgainstDatabase(db.knex, map('keep'), 'partial.yaml')).rejects.toThrow('a category kept as a whole needs a reason');
    // Rows that are deleted, and a category kept with a reason, declare every column.
    await expect(checkDataMapAgainstDatabase(db.knex, map('delete'), 'partial.yaml')).resolves.toBeInstanceOf(Map);
    await expect(checkDataMapAgainstDatabase(db.knex, map('{keep: "test"}'), 'partial.yaml')).resolves.toBeInstanceOf(Map);
  });

  it('reaches rows through several hops before cutting the links, and templates UNIQUE columns per row', async () => {
    const k = db.knex;
    await k.raw(`CREATE TABLE bill_customers (id text PRIMARY KEY, user_id text, email text UNIQUE)`);
    await k.raw(`CREATE TABLE bill_invoices (id text PRIMARY KEY, customer_id text, billing_email text UNIQUE)`);
    await k.raw(`CREATE TABLE bill_lines (id text PRIMARY KEY, invoice_id text, description text)`);
    await k('bill_customers').insert([
      { id: 'bc1', user_id: 'u1', email: 'u1@example.com' },
      { id: 'bc2', user_id: 'u2', email: 'u2@example.com' },
    ]);
    await k('bill_invoices').insert([
      { id: 'i1', customer_id: 'bc1', billing_email: 'u1+1@example.com' },
      { id: 'i2', customer_id: 'bc1', billing_email: 'u1+2@example.com' },
      { id: 'i3', customer_id: 'bc2', billing_email: 'u2+1@example.com' },
    ]);
    await k('bill_lines').insert([
      { id: 'l1', invoice_id: 'i1', description: 'Gift for Ada' },
      { id: 'l2', invoice_id: 'i2', description: 'Ring' },
      { id: 'l3', invoice_id: 'i3', description: 'Other' },
    ]);
    // Listed outermost first: run in map order, the lines would lose their path to the subject.
    const map = parseDataMap(
      `
categories:
  - name: customers
    table: bill_customers
    subject: {column: user_id}
    forget: {columns: {user_id: "null", email: {template: "gone-{column:id}@deleted.local"}}}
  - name: invoices
    table: bill_invoices
    subject: {via: {table: bill_customers, column: customer_id, references: id, subject_column: user_id}}
    forget: {columns: {customer_id: "null", billing_email: {template: "gone-{column:id}@deleted.local"}}}
  - name: lines
    table: bill_lines
    subject: {via: [{table: bill_invoices, column: invoice_id, references: id}, {table: bill_customers, column: customer_id, references: id, subject_column: user_id}]}
    forget: delete
`,
      'billing.yaml',
    );
    const { columnTypes, forgetPlan } = await prepareServerDataMap(k, map, 'billing.yaml', undefined);
    expect(forgetPlan.order.slice(0, 3)).toEqual(['lines', 'invoices', 'customers']);
    const { PrivacyEngine } = await import('../../src/privacy/engine.js');
    const { silentLogger } = await import('../support/engine-fixture.js');
    const billing = new PrivacyEngine({ knex: k, dataMap: map, columnTypes, forgetPlan, logger: silentLogger });
    const r = await billing.forgetUser({ id: 'svc', role: 'platform' }, { userId: 'u1', reason: 'erasure', idempotencyKey: `billing-${slug}` });
    expect(r.rowsAffected).toEqual([
      { table: 'bill_lines', action: 'delete', rows: 2 },
      { table: 'bill_invoices', action: 'update', rows: 2 },
      { table: 'bill_customers', action: 'update', rows: 1 },
    ]);
    expect(await k('bill_lines').orderBy('id').pluck('id')).toEqual(['l3']);
    expect(await k('bill_invoices').orderBy('id').select('id', 'customer_id', 'billing_email')).toEqual([
      { id: 'i1', customer_id: null, billing_email: 'gone-i1@deleted.local' },
      { id: 'i2', customer_id: null, billing_email: 'gone-i2@deleted.local' },
      { id: 'i3', customer_id: 'bc2', billing_email: 'u2+1@example.com' },
    ]);
    expect(await k('bill_customers').orderBy('id').select('id', 'user_id', 'email')).toEqual([
      { id: 'bc1', user_id: null, email: 'gone-bc1@deleted.local' },
      { id: 'bc2', user_id: 'u2', email: 'u2@example.com' },
    ]);
  });

  it('runs apart what a foreign-key action or a trigger would see together: the counts of one statement after another', async () => {
    const k = db.knex;
    await k.raw(`CREATE TABLE gx_accounts (id text PRIMARY KEY, user_id text, label text)`);
    await k.raw(`CREATE TABLE gx_tokens (id text PRIMARY KEY, account_id text REFERENCES gx_accounts (id) ON DELETE CASCADE, user_id text, note text)`);
    await k.raw(`CREATE TABLE gx_notes (id text PRIMARY KEY, user_id text, body text, edits integer NOT NULL DEFAULT 0)`);
    await k.raw(`CREATE FUNCTION gx_count_edit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.edits := OLD.edits + 1; RETURN NEW; END $$`);
    await k.raw(`CREATE TRIGGER gx_notes_edit BEFORE UPDATE ON gx_notes FOR EACH ROW EXECUTE FUNCTION gx_count_edit()`);
    await k('gx_accounts').insert([
      { id: 'a1', user_id: 'gx-u1', label: 'Ada' },
      { id: 'a2', user_id: 'gx-u2', label: 'Bob' },
    ]);
    await k('gx_tokens').insert([
      { id: 't1', account_id: 'a1', user_id: 'gx-u1', note: 'x' },
      { id: 't2', account_id: 'a1', user_id: 'gx-u1', note: 'y' },
      { id: 't3', account_id: 'a2', user_id: 'gx-u2', note: 'z' },
    ]);
    await k('gx_notes').insert([{ id: 'n1', user_id: 'gx-u1', body: 'hello' }]);
    const map = parseDataMap(
      `
categories:
  - {name: accounts, table: gx_accounts, subject: {column: user_id}, forget: delete}
  - {name: tokens, table: gx_tokens, subject: {column: user_id}, forget: {columns: {note: "null"}}}
  - {name: notes, table: gx_notes, subject: {column: user_id}, forget: {columns: {body: "null"}}}
`,
      'cascade.yaml',
    );
    const { columnTypes, forgetPlan } = await prepareServerDataMap(k, map, 'cascade.yaml', undefined);
    // The delete cascades into the tokens; the notes have a trigger; Lethe's own tables (every step from 3 on) go together.
    const own = forgetPlan.steps.map((_, i) => i).filter((i) => i >= 3);
    expect(own.length).toBeGreaterThanOrEqual(3);
    expect(forgetPlan.groups).toEqual([[0], [1], [2], own]);
    const { PrivacyEngine } = await import('../../src/privacy/engine.js');
    const { silentLogger } = await import('../support/engine-fixture.js');
    const engine = new PrivacyEngine({ knex: k, dataMap: map, columnTypes, forgetPlan, logger: silentLogger });
    const r = await engine.forgetUser({ id: 'svc', role: 'platform' }, { userId: 'gx-u1', reason: 'erasure', idempotencyKey: `cascade-${slug}` });
    // Run one after another, the tokens' update finds the subject's tokens deleted by the cascade.
    expect(r.rowsAffected).toEqual([
      { table: 'gx_accounts', action: 'delete', rows: 1 },
      { table: 'gx_tokens', action: 'update', rows: 0 },
      { table: 'gx_notes', action: 'update', rows: 1 },
    ]);
    expect(await k('gx_tokens').pluck('id')).toEqual(['t3']);
    expect(await k('gx_notes').select('body', 'edits')).toEqual([{ body: null, edits: 1 }]);
    expect((await engine.getRequest({ id: 'svc', role: 'platform' }, r.requestId)).rowsAffected).toEqual(r.rowsAffected);
  });

  it('checks the data map against the database at start-up, naming the bad key', async () => {
    const map = parseDataMap(
      `
categories:
  - name: things
    table: users
    subject: {column: id}
    export: {fields: [{name: nick, column: nickname}]}
    forget: {keep: test}
`,
      'bad.yaml',
    );
    await expect(checkDataMapAgainstDatabase(db.knex, map, 'bad.yaml')).rejects.toThrow(
      "bad.yaml: categories.things.export.fields.nick: column 'nickname' does not exist in table 'users'",
    );
    const missing = parseDataMap('categories: [{name: t, table: nope, subject: {column: id}, forget: delete}]', 'missing.yaml');
    await expect(checkDataMapAgainstDatabase(db.knex, missing, 'missing.yaml')).rejects.toThrow(
      "missing.yaml: categories.t.subject.column: table 'nope' does not exist in the database",
    );
  });
}
