import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadDataMap } from '../src/privacy/data-map.js';
import { checkDataMapAgainstDatabase } from '../src/privacy/schema-check.js';
import { SnapshotReader } from '../src/privacy/snapshot-reader.js';
import { loadDemoData } from '../src/store/demo-data.js';
import { openDatabase } from '../src/store/database.js';
import { migrateIdentitySchema, migrateLethe } from '../src/store/migrations.js';
import { requirePostgres, startPostgres } from '../test/support/postgres.js';
const bin = requirePostgres() ?? '';
const cluster = await startPostgres(bin);
const url = await cluster.createDatabase('x');
const db = await openDatabase({ kind: 'postgres', url, poolMax: 2 });
try {
  await migrateLethe(db.knex);
  await migrateIdentitySchema(db.knex);
  await loadDemoData(db.knex);
  const map = await loadDataMap('datamaps/identity.yaml');
  const types = await checkDataMapAgainstDatabase(db.knex, map, 'x');
  process.env.XSQL = '/tmp/exp/contents.sql';
  await db.knex.transaction(async (trx) => {
    await new SnapshotReader(map, types).contents(trx, 'user-id-123');
  });
  const sql = readFileSync('/tmp/exp/contents.sql', 'utf8');
  const psql = join(bin, 'psql');
  const out = execFileSync(psql, ['-X', '-d', url, '-c', `EXPLAIN (ANALYZE, SUMMARY ON) ${sql}`], { encoding: 'utf8' });
  console.log(out.split('\n').filter((l) => /Planning|Execution|^     ->  |Sort Key|Index Scan|Seq Scan/.test(l)).slice(0, 80).join('\n'));
} finally {
  await db.close();
  await cluster.destroy();
}
