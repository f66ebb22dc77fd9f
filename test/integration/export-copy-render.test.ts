import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DataMap, parseDataMap } from '../../src/privacy/data-map.js';
import { checkDataMapAgainstDatabase } from '../../src/privacy/schema-check.js';
import { SnapshotReader } from '../../src/privacy/snapshot-reader.js';
import { type ColumnTypes, exportQuery } from '../../src/privacy/sql.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { queriesOf } from '../../src/store/session.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';

/**
 * The export on PostgreSQL reads plain columns through COPY and renders the JSON in Node
 * (src/privacy/copy-json.ts): its records must be byte for byte those of row_to_json.
 */
const bin = requirePostgres();

const COLUMNS: Record<string, string> = {
  s: 'text',
  v: 'varchar(40)',
  c: 'char(6)',
  ts: 'timestamptz',
  tsn: 'timestamp',
  n: 'numeric',
  i: 'integer',
  sm: 'smallint',
  big: 'bigint',
  f: 'double precision',
  r: 'real',
  bo: 'boolean',
  j: 'json',
  jb: 'jsonb',
  arr: 'text[]',
  iarr: 'integer[]',
  d: 'date',
  u: 'uuid',
  iv: 'interval',
  ip: 'inet',
};

/** Each row sets some columns (SQL literals); the others stay NULL. */
const ROWS: Array<Record<string, string>> = [
  { s: `'héllo 😀 日本 \u2028 \u00a0'`, v: `'ü'`, c: `'ab'`, j: `'{"a": [1, 2], "b": "x\\ny"}'`, jb: `'{"b": "ü", "a": [1, 2.50, null, true]}'` },
  { s: `E'\\x01\\x02\\t\\n\\r\\b\\f\\x0b\\x1f\\x7f end'`, v: `E'tab\\there'`, j: `E'{"a":\\n\\t"b\\\\u0000 \\\\\\\\ \\\\""}'` },
  { s: `'a"b\\c\\\\N'`, v: `'\\N'`, c: `'\\'`, arr: `ARRAY['a,b', 'c"d', NULL, 'e\\f', '']` },
  { s: `''`, v: `'N'`, ts: `'2024-06-15 10:00:00+02'`, tsn: `'2024-06-15 10:00:00'`, n: `'NaN'`, f: `'NaN'`, r: `'Infinity'`, bo: 'true' },
  { ts: `'2024-06-15 10:00:00.123456Z'`, tsn: `'2024-06-15 10:00:00.1'`, n: `'1.50'`, f: `'-Infinity'`, r: '0.1', bo: 'false', i: '-2147483648', sm: '32767' },
  { ts: `'infinity'`, tsn: `'-infinity'`, n: `'-0.000001'`, f: '1e300', big: '9223372036854775807', iarr: `'{1,2,NULL}'`, d: `'2024-02-29'` },
  {
    ts: `'0044-03-15 12:00:00 BC'`,
    tsn: `'12345-01-01 00:00:00'`,
    n: `'123456789012345678901234567890.123'`,
    f: '-0',
    r: '1.5e-40',
    u: `'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'`,
  },
  {
    ts: `'2024-01-01 00:00:00.000120+05:30'`,
    n: `'Infinity'`,
    f: '0.30000000000000004',
    iv: `'1 day 02:03:04.5'`,
    ip: `'10.0.0.1/8'`,
    jb: `'"just a string"'`,
    j: `'  [1,  2 ] '`,
  },
  { n: `'-Infinity'`, j: `'null'`, jb: `'null'`, s: `E'\\\\'`, v: `E'\\r\\n'` },
  // The edges of the years whose text Node formats (1 to 9999), and just past them.
  { ts: `'0001-01-01 00:00:00+00'`, tsn: `'9999-12-31 23:59:59.999999'` },
  { ts: `'9999-12-31 23:59:59.5+00'`, tsn: `'0001-01-01 00:00:00'` },
  { ts: `'0001-12-31 23:59:59+00 BC'`, tsn: `'10000-01-01 00:00:00'` },
  {},
];

const MAP = `categories:
  - name: tricky
    table: tricky
    subject: {column: user_id}
    export:
      fields:
${['id', ...Object.keys(COLUMNS)].map((c) => `        - {name: ${c === 'id' ? 'ident' : `field_${c}`}, column: ${c}}`).join('\n')}
      order_by: [{column: id}]
    forget: {keep: "test rows"}
`;

describe.runIf(bin !== undefined)('the export rendered in Node matches row_to_json', () => {
  let cluster: PostgresCluster | undefined;
  let db: Database;
  let map: DataMap;
  let types: ColumnTypes;

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    db = await openDatabase({ kind: 'postgres', url: await cluster.createDatabase() });
    const cols = Object.entries(COLUMNS).map(([name, type]) => `"${name}" ${type}`);
    await db.knex.raw(`CREATE TABLE tricky (id text PRIMARY KEY, user_id text NOT NULL, ${cols.join(', ')})`);
    for (const [i, row] of ROWS.entries()) {
      const names = Object.keys(row);
      const id = `r${String(i).padStart(2, '0')}`;
      await db.knex.raw(
        `INSERT INTO tricky (id, user_id${names.map((n) => `, "${n}"`).join('')}) VALUES ('${id}', 'subject'${Object.values(row)
          .map((v) => `, ${v}`)
          .join('')})`,
      );
    }
    map = parseDataMap(MAP, 'tricky.yaml');
    types = await checkDataMapAgainstDatabase(db.knex, map, 'tricky.yaml');
  }, 60_000);

  afterAll(async () => {
    await db?.close();
    await cluster?.destroy();
  });

  // smallCategoryRows 0: every category through COPY and Node's renderer; the default: these few
  // rows come with the counts, rendered by PostgreSQL, and must be the same.
  it.each([
    ['UTC', 0],
    ['America/New_York', 0],
    ['UTC', undefined],
  ])('record for record, byte for byte (session time zone %s, small categories up to %s rows)', async (zone, smallCategoryRows) => {
    const category = map.categories[0];
    if (category === undefined) throw new Error('no category');
    const q = exportQuery(category, types, 'subject');
    const expected = await db.knex.transaction(async (trx) => {
      await trx.raw(`SET LOCAL TimeZone = '${zone}'`);
      const res = (await trx.raw(q.sql, q.bindings)) as { rows: Array<{ j: string }> };
      return res.rows.map((r) => r.j);
    });
    expect(expected).toHaveLength(ROWS.length);

    const reader = new SnapshotReader(map, types, { fetchRows: 3, smallCategoryRows });
    const actual = await db.knex.transaction(async (trx) => {
      await trx.raw(`SET LOCAL TimeZone = '${zone}'`);
      const out: string[] = [];
      const snapshot = queriesOf(trx);
      const contents = await reader.contents(snapshot, 'subject');
      expect(contents.small.has(category.name)).toBe(smallCategoryRows === undefined);
      for await (const b of reader.batches(snapshot, 'subject', contents, new AbortController().signal)) {
        // The bytes the document and the gRPC messages are made of, and the records decoded from them.
        expect(b.records.joined().toString()).toBe(b.records.strings().join(','));
        out.push(...b.records.strings());
      }
      return out;
    });
    expect(Buffer.from(actual.join('\n'))).toEqual(Buffer.from(expected.join('\n')));
    expect(actual).toEqual(expected);
  });
});
