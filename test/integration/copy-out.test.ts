import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JsonRecords } from '../../src/privacy/json-records.js';
import { CopyOutQuery } from '../../src/store/copy-out.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';

/**
 * CopyOutQuery takes the connection's socket from node-postgres for a COPY and gives it back: rows
 * are whole however the socket cuts them, errors and notices in the middle reach pg, and the
 * connection answers the next query.
 */
const bin = requirePostgres();

/** Every row's text, in pages of at most `pageRows`, read through CopyOutQuery. */
async function copyRows(client: pg.Client, sql: string, pageRows = 1000): Promise<{ rows: string[]; pages: number }> {
  let page: string[] = [];
  const copy = new CopyOutQuery<string[]>(`COPY (${sql}) TO STDOUT`, {
    row(src, from, to) {
      page.push(src.toString('utf8', from, to));
      if (page.length < pageRows) return undefined;
      const full = page;
      page = [];
      return full;
    },
    rest: () => (page.length > 0 ? page : undefined),
  });
  client.query(copy);
  const rows: string[] = [];
  let pages = 0;
  for await (const p of copy as AsyncIterable<string[]>) {
    rows.push(...p);
    pages += 1;
  }
  return { rows, pages };
}

describe.runIf(bin !== undefined)('COPY TO STDOUT read row by row (CopyOutQuery)', () => {
  let cluster: PostgresCluster;
  let client: pg.Client;

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    client = new pg.Client({ connectionString: await cluster.createDatabase() });
    await client.connect();
    await client.query(
      `CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN IF i % 100 = 0 THEN RAISE NOTICE 'at %', i; END IF; RETURN i; END $$`,
    );
  });
  afterAll(async () => {
    await client?.end();
    await cluster?.destroy();
  });

  it('reads every row whole, in pages, and leaves the connection usable', async () => {
    const { rows, pages } = await copyRows(client, `SELECT g, repeat('ü', g % 50) FROM generate_series(1, 20000) g`, 3000);
    expect(rows).toHaveLength(20_000);
    expect(pages).toBe(7);
    expect(rows[0]).toBe('1\tü');
    expect(rows[19_999]).toBe(`20000\t`);
    expect(rows[48]).toBe(`49\t${'ü'.repeat(49)}`);
    expect((await client.query('SELECT 41 + 1 AS n')).rows).toEqual([{ n: 42 }]);
  });

  it('joins a row longer than many socket reads', async () => {
    const { rows } = await copyRows(client, `SELECT g, repeat(chr(65 + g), 3000000) FROM generate_series(0, 2) g`);
    expect(rows.map((r) => r.length)).toEqual([3_000_002, 3_000_002, 3_000_002]);
    expect(rows[1]?.slice(0, 4)).toBe('1\tBB');
    expect(rows[2]?.endsWith('CCC')).toBe(true);
  });

  it('passes over notices sent among the rows (as pg-copy-streams does)', async () => {
    const { rows } = await copyRows(client, 'SELECT noisy(g) FROM generate_series(1, 1000) g');
    expect(rows).toEqual(Array.from({ length: 1000 }, (_, i) => String(i + 1)));
    // The same query outside COPY does send them.
    const notices: string[] = [];
    client.on('notice', (n) => notices.push(n.message ?? ''));
    await client.query('SELECT noisy(g) FROM generate_series(1, 1000) g');
    client.removeAllListeners('notice');
    expect(notices).toHaveLength(10);
  });

  it("fails with PostgreSQL's error when the query fails part-way, and the connection recovers", async () => {
    await expect(copyRows(client, 'SELECT 1 / (g - 15000) FROM generate_series(1, 20000) g')).rejects.toThrow('division by zero');
    expect((await client.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
  });

  it('fails at once for a statement PostgreSQL refuses', async () => {
    await expect(copyRows(client, 'SELECT no_such_column FROM generate_series(1, 2)')).rejects.toThrow('no_such_column');
    expect((await client.query('SELECT 2 AS ok')).rows).toEqual([{ ok: 2 }]);
  });

  it('hands rendered batches on unchanged through the Readable', async () => {
    // The export's use: pages are JsonRecords objects, not bytes.
    const { JsonRecordsBuilder } = await import('../../src/privacy/json-records.js');
    const out = new JsonRecordsBuilder();
    const copy = new CopyOutQuery<JsonRecords>(`COPY (SELECT '{"n":' || g || '}' FROM generate_series(1, 5) g) TO STDOUT`, {
      row(src, from, to) {
        out.begin();
        out.pushRange(src, from, to);
        out.end();
        return undefined;
      },
      rest: () => out.take(),
    });
    client.query(copy);
    const batches: JsonRecords[] = [];
    for await (const b of copy as AsyncIterable<JsonRecords>) batches.push(b);
    expect(batches.map((b) => b.joined().toString())).toEqual(['{"n":1},{"n":2},{"n":3},{"n":4},{"n":5}']);
  });
});
