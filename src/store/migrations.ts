import type { Knex } from 'knex';
import { withAdvisoryLock } from './advisory-lock.js';
import * as identity001 from './migrations/identity/001-identity-schema.js';
import * as identity002 from './migrations/identity/002-login-events-order.js';
import * as lethe001 from './migrations/lethe/001-ledger.js';
import * as lethe002 from './migrations/lethe/002-events.js';
import * as lethe003 from './migrations/lethe/003-export-artifacts.js';
import * as lethe004 from './migrations/lethe/004-erasure.js';
import * as lethe005 from './migrations/lethe/005-workers.js';
import * as lethe006 from './migrations/lethe/006-scheduling.js';
import * as lethe007 from './migrations/lethe/007-rights.js';
import * as sidecar001 from './migrations/sidecar/001-purges.js';
import * as sidecar002 from './migrations/sidecar/002-changes.js';

interface Migration {
  up(knex: Knex): Promise<void>;
  down(knex: Knex): Promise<void>;
}

/** Migrations are listed here rather than found on disk, so they work the same from src/ and dist/. */
class StaticMigrationSource implements Knex.MigrationSource<string> {
  constructor(private readonly migrations: Readonly<Record<string, Migration>>) {}
  getMigrations(): Promise<string[]> {
    return Promise.resolve(Object.keys(this.migrations).sort());
  }
  getMigrationName(name: string): string {
    return name;
  }
  getMigration(name: string): Promise<Migration> {
    const m = this.migrations[name];
    if (m === undefined) return Promise.reject(new Error(`unknown migration ${name}`));
    return Promise.resolve(m);
  }
}

const LETHE = new StaticMigrationSource({
  '001-ledger': lethe001,
  '002-events': lethe002,
  '003-export-artifacts': lethe003,
  '004-erasure': lethe004,
  '005-workers': lethe005,
  '006-scheduling': lethe006,
  '007-rights': lethe007,
});
const SIDECAR = new StaticMigrationSource({ '001-purges': sidecar001, '002-changes': sidecar002 });
const IDENTITY = new StaticMigrationSource({ '001-identity-schema': identity001, '002-login-events-order': identity002 });

/**
 * knex's own migration lock makes a second replica migrating at the same moment fail ("Migration
 * table is already locked") instead of waiting. Replicas starting together wait for each other
 * on an advisory lock instead; the later ones then find nothing left to do.
 */
async function migrate(knex: Knex, migrationSource: StaticMigrationSource, tableName: string): Promise<void> {
  await withAdvisoryLock(knex, 'lethe:migrations', () => knex.migrate.latest({ migrationSource, tableName }));
}

/** Lethe's own tables: the ledger, the outbox, export artifacts. */
export async function migrateLethe(knex: Knex): Promise<void> {
  await migrate(knex, LETHE, 'lethe_migrations');
}

/** The sample SSO identity schema that the default data map describes. */
export async function migrateIdentitySchema(knex: Knex): Promise<void> {
  await migrate(knex, IDENTITY, 'lethe_identity_migrations');
}

/** The sidecar's tables in a downstream service's own database. */
export async function migrateSidecar(knex: Knex): Promise<void> {
  await migrate(knex, SIDECAR, 'lethe_sidecar_migrations');
}
