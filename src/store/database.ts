import { mkdir } from 'node:fs/promises';
import knexPkg from 'knex';
import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import pg from 'pg';

// knex's ESM build exposes the factory on the default export only.
const { knex } = knexPkg;

// Return bigint (COUNT(*) and bigserial) as a JS number, as PGlite does: counts here stay far
// below 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number.parseInt(v, 10));

export type DatabaseTarget =
  | { kind: 'postgres'; url: string; poolMax?: number }
  | { kind: 'pglite'; dataDir?: string | undefined };

export interface Database {
  readonly knex: Knex;
  readonly kind: DatabaseTarget['kind'];
  /** Where the data lives, without credentials (safe to log). */
  readonly description: string;
  close(): Promise<void>;
}

export async function openDatabase(target: DatabaseTarget): Promise<Database> {
  if (target.kind === 'postgres') {
    const k = knex({
      client: 'pg',
      connection: { connectionString: target.url, application_name: 'lethe' },
      pool: {
        min: 0,
        max: target.poolMax ?? 10,
        // A dead database must surface as UNAVAILABLE quickly, not hang a call.
        acquireTimeoutMillis: 5_000,
        createTimeoutMillis: 5_000,
        idleTimeoutMillis: 30_000,
      },
      acquireConnectionTimeout: 5_000,
    });
    return { knex: k, kind: 'postgres', description: describePostgresUrl(target.url), close: () => k.destroy() };
  }
  if (target.dataDir !== undefined) await mkdir(target.dataDir, { recursive: true });
  const k = knex({
    client: ClientPgLite,
    dialect: 'postgres',
    connection: target.dataDir === undefined ? {} : { filename: target.dataDir },
    // PGlite has a single connection; a query waiting behind a long transaction fails after this.
    acquireConnectionTimeout: 60_000,
  });
  return {
    knex: k,
    kind: 'pglite',
    description: target.dataDir === undefined ? 'embedded PGlite (in memory)' : `embedded PGlite in ${target.dataDir}`,
    close: () => k.destroy(),
  };
}

/** postgres://user:secret@host:5432/db → postgresql://host:5432/db */
export function describePostgresUrl(url: string): string {
  try {
    const u = new URL(url);
    return `postgresql://${u.host}${u.pathname}`;
  } catch {
    return 'postgresql (unparseable URL)';
  }
}


