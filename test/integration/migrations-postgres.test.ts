import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Database, openDatabase } from '../../src/store/database.js';
import { migrateIdentitySchema, migrateLethe, migrateSidecar } from '../../src/store/migrations.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';

/** Replicas starting together (the Helm chart runs two) all migrate at start-up. */

const bin = requirePostgres();

describe.runIf(bin !== undefined)('migrations on PostgreSQL, from several replicas at once', () => {
  let cluster: PostgresCluster;
  const opened: Database[] = [];
  const replicas = async (n: number, url: string) => {
    const dbs = await Promise.all(Array.from({ length: n }, () => openDatabase({ kind: 'postgres', url })));
    opened.push(...dbs);
    return dbs;
  };

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
  });
  afterAll(async () => {
    await Promise.all(opened.map((d) => d.close()));
    await cluster?.destroy();
  });

  it('4 concurrent migrateLethe calls on a fresh database all succeed, and migrate once', async () => {
    const url = await cluster.createDatabase();
    const dbs = await replicas(4, url);
    const results = await Promise.allSettled(dbs.map((d) => migrateLethe(d.knex)));
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
    const k = dbs[0]?.knex;
    if (k === undefined) throw new Error('no database');
    expect(await k('lethe_migrations').orderBy('id').pluck('name')).toEqual([
      '001-ledger',
      '002-events',
      '003-export-artifacts',
      '004-erasure',
      '005-workers',
      '006-scheduling',
      '007-rights',
    ]);
    const tables = (await k('pg_tables')
      .where({ schemaname: 'public' })
      .andWhere('tablename', 'like', 'lethe\\_%')
      .orderBy('tablename')
      .pluck('tablename')) as string[];
    expect(tables).toEqual([
      'lethe_change_versions',
      'lethe_confirmations',
      'lethe_consents',
      'lethe_erasures',
      'lethe_export_artifact_chunks',
      'lethe_export_artifact_keys',
      'lethe_export_artifacts',
      'lethe_migrations',
      'lethe_migrations_lock',
      'lethe_outbox',
      'lethe_privacy_requests',
      'lethe_processing_limits',
      'lethe_rectifications',
      'lethe_workers',
    ]);
  });

  it('the identity schema and the sidecar table too, alongside', async () => {
    const url = await cluster.createDatabase();
    const dbs = await replicas(4, url);
    const results = await Promise.allSettled(dbs.flatMap((d) => [migrateLethe(d.knex), migrateIdentitySchema(d.knex), migrateSidecar(d.knex)]));
    expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
    const k = dbs[0]?.knex;
    if (k === undefined) throw new Error('no database');
    expect(await k('lethe_identity_migrations').orderBy('id').pluck('name')).toEqual(['001-identity-schema', '002-login-events-order']);
    expect(await k('lethe_sidecar_migrations').orderBy('id').pluck('name')).toEqual(['001-purges', '002-changes']);
  });
});
