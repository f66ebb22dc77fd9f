import { randomUUID } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Knex } from 'knex';
import pg from 'pg';
import { mintLocalToken } from '../src/auth/local-key.js';
import { type PrivacyClient, connectPrivacyService } from '../src/client/privacy-client.js';
import { loadDataMap } from '../src/privacy/data-map.js';
import { forgetStatements } from '../src/privacy/forget.js';
import { prepareServerDataMap } from '../src/privacy/lethe-tables.js';
import { openDatabase } from '../src/store/database.js';
import { withServerOnPostgres } from './export.js';
import { cpuMeters, postmasterPid } from './fanout/cpu.js';
import { seedIdentity, userId } from './fanout/services.js';
import { intFlag } from './flags.js';
import { resetStatementStats } from './profile.js';

/**
 * The forget benchmark, against a Lethe server in its own process on a throwaway PostgreSQL:
 *
 * 1. forget_vs_raw_sql_ratio: ForgetUser of a subject with SUBJECT_ROWS rows (login events),
 *    against the same statements, with the same values, sent as one raw SQL transaction
 *    (`BEGIN; …; COMMIT` in one simple-query string, as psql -c sends it) for a twin subject
 *    with the same rows. Each is timed REPEAT times on fresh subjects, alternating; the medians
 *    are compared. The server also writes the ledger, the audit entry and its own tables.
 * 2. forget_throughput_per_s: USERS distinct demo-sized users (a user row and two login events
 *    each) forgotten through ForgetUser by CLIENTS concurrent clients.
 *
 * Flags: --subject-rows N (default 10,000), --repeat N (default 15: with 5, the same tree's ratio
 * ranged from 0.87 to 1.41 on this machine), --users N (default 2,000), --clients N (default 16).
 */

const DATA_MAP = fileURLToPath(new URL('../datamaps/identity.yaml', import.meta.url));
const PRINCIPAL = 'bench';
const REASON = 'GDPR Right to be Forgotten';

export async function run(args: string[]): Promise<void> {
  const subjectRows = intFlag(args, '--subject-rows', 10_000);
  const repeat = intFlag(args, '--repeat', 15);
  const users = intFlag(args, '--users', 2_000);
  const clients = intFlag(args, '--clients', 16);

  const hashKey = 'ab'.repeat(32);
  await withServerOnPostgres(
    { LETHE_DATA_MAP: DATA_MAP, LETHE_PLATFORM_PRINCIPALS: PRINCIPAL, LETHE_HASH_KEY: hashKey },
    async ({ url, dataDir, address, serverPid, clusterDataDir }) => {
      const { client, close } = connectPrivacyService(address, await mintLocalToken(dataDir, PRINCIPAL, 3600));
      try {
        const db = await openDatabase({ kind: 'postgres', url, poolMax: 2 });
        try {
          await seedBigSubjects(db.knex, repeat, subjectRows);
          await seedIdentity(db.knex, users);
          const { forgetPlan } = await prepareServerDataMap(db.knex, await loadDataMap(DATA_MAP), DATA_MAP, Buffer.from(hashKey, 'hex'));
          const rawSql = (subject: string) =>
            [
              'BEGIN',
              ...forgetStatements(forgetPlan, subject, { timestamp: Date.now(), requestId: randomUUID() }).map((s) => db.knex.raw(s.sql, s.bindings).toQuery()),
              'COMMIT',
            ].join(';\n');

          // A warm-up of each path (plans cached, connections open).
          await forget(client, userId(users));
          await timeRawSql(url, rawSql(userId(users - 1)));
          await resetStatementStats(url);
          const api: number[] = [];
          const raw: number[] = [];
          // Before each, the table as the last run left it is vacuumed and analyzed, so that
          // autovacuum and autoanalyze do not start during a timed run (one of 10,000 rows leaves
          // 10,000 dead versions; every third would start an autoanalyze of login_events).
          const settled = () => db.knex.raw('VACUUM ANALYZE users, login_events');
          for (let i = 1; i <= repeat; i++) {
            await settled();
            raw.push(await timeRawSql(url, rawSql(`big-raw-${i}`)));
            await settled();
            api.push(await timed(() => forget(client, `big-api-${i}`)));
          }
          const meters = cpuMeters(serverPid, postmasterPid(clusterDataDir));
          const throughput = await forgetAll(address, dataDir, users - 2, clients);
          const cpu = meters.read();

          const apiMs = median(api);
          const rawMs = median(raw);
          const lines: Array<[string, string]> = [
            ['machine_cpus', String(cpus().length)],
            ['load_average_1m', (loadavg()[0] ?? 0).toFixed(2)],
            ['subject_rows', String(subjectRows)],
            ['forget_api_median_ms', apiMs.toFixed(1)],
            ['forget_raw_sql_median_ms', rawMs.toFixed(1)],
            ['users', String(users - 2)],
            ['clients', String(clients)],
            ['forget_throughput_errors', String(throughput.errors)],
            // CPU per forget in the throughput phase, in ms, and how busy the whole machine was.
            ...cpu.perProcess.map(([name, seconds]): [string, string] => [`cpu_ms_per_forget_${name}`, ((1000 * seconds) / (users - 2)).toFixed(2)]),
            ['machine_cpu_busy_pct', cpu.machineBusyPct.toFixed(0)],
            ['forget_vs_raw_sql_ratio', (apiMs / rawMs).toFixed(3)],
            ['forget_throughput_per_s', throughput.perSecond.toFixed(0)],
          ];
          for (const [name, value] of lines) console.log(`${name}: ${value}`);
        } finally {
          await db.close();
        }
      } finally {
        close();
      }
    },
  );
}

/** Twin subjects big-raw-i and big-api-i, each with `rows` login events. */
async function seedBigSubjects(knex: Knex, repeat: number, rows: number): Promise<void> {
  const ids = Array.from({ length: repeat }, (_, i) => [`big-raw-${i + 1}`, `big-api-${i + 1}`]).flat();
  await knex.raw(`INSERT INTO users (id, email) SELECT id, id || '@example.com' FROM unnest(?::text[]) AS id`, [ids]);
  await knex.raw(
    `INSERT INTO login_events (id, user_id, timestamp, ip_address, user_agent, provider, success, geo_country, geo_city)
     SELECT s.id || '-login-' || k, s.id, now() - k * interval '1 minute', '203.0.113.7', 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0', 'password', true, 'DE', 'Berlin'
     FROM unnest(?::text[]) AS s(id) CROSS JOIN generate_series(1, ?::int) AS k`,
    [ids, rows],
  );
  await knex.raw('VACUUM ANALYZE users, login_events');
}

async function forget(client: PrivacyClient, subject: string): Promise<void> {
  const r = await client.forgetUser({ userId: subject, reason: REASON, idempotencyKey: randomUUID() });
  if (!r.success) throw new Error(`forget of ${subject} did not succeed`);
}

async function timeRawSql(url: string, script: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await timed(async () => void (await c.query(script)));
  } finally {
    await c.end();
  }
}

/** Users 1..n forgotten by `clients` concurrent clients, each on a connection of its own. */
async function forgetAll(address: string, dataDir: string, n: number, clients: number): Promise<{ perSecond: number; errors: number }> {
  const token = await mintLocalToken(dataDir, PRINCIPAL, 3600);
  const conns = Array.from({ length: clients }, () => connectPrivacyService(address, token));
  let next = 1;
  let errors = 0;
  try {
    const t0 = performance.now();
    await Promise.all(
      conns.map(async ({ client }) => {
        for (let i = next++; i <= n; i = next++) await forget(client, userId(i)).catch(() => void errors++);
      }),
    );
    return { perSecond: n / ((performance.now() - t0) / 1000), errors };
  } finally {
    for (const c of conns) c.close();
  }
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}
