import { randomBytes } from 'node:crypto';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { mintLocalToken } from '../src/auth/local-key.js';
import { receiveExport } from '../src/client/export-receiver.js';
import { connectPrivacyService } from '../src/client/privacy-client.js';
import { loadDataMap } from '../src/privacy/data-map.js';
import { checkDataMapAgainstDatabase } from '../src/privacy/schema-check.js';
import { exportQuery } from '../src/privacy/sql.js';
import { openDatabase } from '../src/store/database.js';
import { freePort, requirePostgres, startPostgres } from '../test/support/postgres.js';
import { cpuMeters, postmasterPid } from './fanout/cpu.js';
import { clusterProfileSettings, resetStatementStats, serverProfileArgs, writeCpuProfileSummary, writeStatementStats } from './profile.js';

/**
 * The export benchmark: one subject with ROWS login events in a throwaway PostgreSQL, exported
 * through the gRPC API (no row limit: bench/export-datamap.yaml) by a Lethe server in its own
 * process to a client that counts and discards the records; compared in the same run with
 * `psql \copy` of the same rows and columns to /dev/null. The bar: export_vs_psql_ratio >= 0.6
 * and server_rss_growth_mb < 64.
 *
 * Besides the four figures of the bar it prints, before them: psql \copy of the server's own
 * export statement (the ceiling for any path where PostgreSQL renders the JSON), the CLI's
 * receiving path (document assembly and SHA-256 check), the load average, the server's CPU
 * time during the export and its RSS before it. psql is timed twice and the faster run counts.
 *
 * Flags: --rows N (default 1,000,000).
 */

export const SUBJECT = 'bench-subject';
const WARMUP_SUBJECT = 'bench-warmup';
const WARMUP_ROWS = 50_000;
const DATA_MAP = fileURLToPath(new URL('./export-datamap.yaml', import.meta.url));
const SERVER = fileURLToPath(new URL('./server-process.ts', import.meta.url));
/**
 * The Node flags the chart runs the server with (templates/server-deployment.yaml), then any in
 * LETHE_BENCH_SERVER_NODE_FLAGS (space-separated, e.g. `--trace-gc`: the server's stdout after
 * `ready` goes to the bench's stderr).
 */
const SERVER_NODE_FLAGS = ['--initial-heap-size=256', '--external-memory-accounted-in-global-limit'];
const extraServerFlags = (): string[] => (process.env.LETHE_BENCH_SERVER_NODE_FLAGS ?? '').split(' ').filter(Boolean);
const COLUMNS = 'id, timestamp, ip_address, user_agent, provider, success, risk_score, risk_factors, geo_country, geo_city';

export async function run(args: string[]): Promise<void> {
  const at = args.indexOf('--rows');
  const rows = at >= 0 ? Number(args[at + 1]) : 1_000_000;
  if (!Number.isInteger(rows) || rows <= 0) throw new Error('--rows takes a positive integer');

  const bin = requirePostgres();
  if (bin === undefined) throw new Error('PostgreSQL binaries not found: apt-get install -y postgresql, or set LETHE_PG_BIN');
  const cluster = await startPostgres(bin, { settings: clusterProfileSettings() });
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-bench-'));
  let server: ChildProcess | undefined;
  let url: string | undefined;
  try {
    url = await cluster.createDatabase('lethe_bench');
    const started = await startServer(url, dataDir, {}, serverProfileArgs());
    server = started.child;
    const pid = started.child.pid ?? 0;
    const address = `127.0.0.1:${started.port}`;

    const seedStart = performance.now();
    await seed(url, rows);
    const seedSeconds = (performance.now() - seedStart) / 1000;
    await resetStatementStats(url);

    const psql = join(bin, 'psql');
    const version = execFileSync(psql, ['--version'], { encoding: 'utf8' }).trim();
    const copySql = `\\copy (SELECT ${COLUMNS} FROM login_events WHERE user_id = '${SUBJECT}') TO '/dev/null'`;
    const psqlSeconds = Math.min(timePsql(psql, url, copySql), timePsql(psql, url, copySql));
    // The server's own statement (ORDER BY, JSON rendered by PostgreSQL): what any export path can reach at best.
    const exportSql = `\\copy (${await loginEventsExportSql(url)}) TO '/dev/null'`;
    const exportSqlSeconds = timePsql(psql, url, exportSql);

    const token = await mintLocalToken(dataDir, SUBJECT, 3600);
    const warmupToken = await mintLocalToken(dataDir, WARMUP_SUBJECT, 3600);
    for (let i = 0; i < 2; i++) await exportAndDiscard(address, warmupToken, WARMUP_SUBJECT, WARMUP_ROWS);

    const load = loadavg()[0] ?? 0;
    const rss = new RssProbe(pid);
    const meters = cpuMeters(pid, postmasterPid(cluster.dataDir));
    const exportStart = performance.now();
    await exportAndDiscard(address, token, SUBJECT, rows);
    const exportSeconds = (performance.now() - exportStart) / 1000;
    const cpu = meters.read();
    const serverCpu = cpu.perProcess.find(([name]) => name === 'server')?.[1] ?? 0;
    const growthMb = rss.stop();

    const receiveStart = performance.now();
    await receiveAndDiscard(address, token, rows);
    const receiveSeconds = (performance.now() - receiveStart) / 1000;

    const exportRate = rows / exportSeconds;
    const psqlRate = rows / psqlSeconds;
    const lines: Array<[string, string]> = [
      ['machine_cpus', String(cpus().length)],
      ['postgres', version],
      ['load_average_1m', load.toFixed(2)],
      ['rows', String(rows)],
      ['seed_s', seedSeconds.toFixed(1)],
      ['export_s', exportSeconds.toFixed(2)],
      ['server_cpu_s', serverCpu.toFixed(2)],
      ...cpu.perProcess.filter(([name]) => name !== 'server').map(([name, seconds]): [string, string] => [`${name}_cpu_s`, seconds.toFixed(2)]),
      ['psql_copy_s', psqlSeconds.toFixed(2)],
      ['psql_copy_export_sql_rows_per_s', (rows / exportSqlSeconds).toFixed(0)],
      ['receive_export_rows_per_s', (rows / receiveSeconds).toFixed(0)],
      ['server_rss_before_mb', rss.baselineMb.toFixed(1)],
      ['export_rows_per_s', exportRate.toFixed(0)],
      ['psql_copy_rows_per_s', psqlRate.toFixed(0)],
      ['export_vs_psql_ratio', (exportRate / psqlRate).toFixed(3)],
      ['server_rss_growth_mb', growthMb.toFixed(1)],
    ];
    for (const [name, value] of lines) console.log(`${name}: ${value}`);
  } finally {
    if (url !== undefined) await writeStatementStats(url);
    if (server !== undefined) await stopServer(server);
    writeCpuProfileSummary();
    await cluster.destroy();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/**
 * A throwaway PostgreSQL cluster with one database and a Lethe server process on it (configured
 * by `env` besides the defaults of startServer), handed to `body`; everything is removed after.
 */
export async function withServerOnPostgres<T>(
  env: Record<string, string>,
  body: (s: { url: string; dataDir: string; address: string; serverPid: number; clusterDataDir: string }) => Promise<T>,
): Promise<T> {
  const bin = requirePostgres();
  if (bin === undefined) throw new Error('PostgreSQL binaries not found: apt-get install -y postgresql, or set LETHE_PG_BIN');
  const cluster = await startPostgres(bin, { settings: clusterProfileSettings() });
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-bench-'));
  try {
    const url = await cluster.createDatabase('lethe_bench');
    const server = await startServer(url, dataDir, env, serverProfileArgs());
    try {
      return await body({ url, dataDir, address: `127.0.0.1:${server.port}`, serverPid: server.child.pid ?? 0, clusterDataDir: cluster.dataDir });
    } finally {
      await writeStatementStats(url);
      await stopServer(server.child);
      writeCpuProfileSummary();
    }
  } finally {
    await cluster.destroy();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

export function startServer(
  url: string,
  dataDir: string,
  env: Record<string, string> = {},
  nodeArgs: readonly string[] = [],
): Promise<{ child: ChildProcess; port: number }> {
  return startReadyProcess(SERVER, {
    env: {
      DATABASE_URL: url,
      LETHE_ARTIFACT_KEY: randomBytes(32).toString('hex'),
      LETHE_DATA_DIR: dataDir,
      LETHE_DATA_MAP: DATA_MAP,
      LETHE_MIGRATE_IDENTITY_SCHEMA: 'true',
      LETHE_LOG_LEVEL: 'error',
      ...env,
    },
    nodeArgs,
  });
}

/**
 * A TypeScript server `script` in a process of its own, run with the server's Node flags and
 * `--listen 127.0.0.1:<free port>`; answers once it printed `ready <port>`.
 */
export async function startReadyProcess(
  script: string,
  opts: { readonly env: Record<string, string>; readonly nodeArgs?: readonly string[] },
): Promise<{ child: ChildProcess; port: number }> {
  const listen = `127.0.0.1:${await freePort()}`;
  const args = [...SERVER_NODE_FLAGS, ...extraServerFlags(), ...(opts.nodeArgs ?? []), '--import', 'tsx', script, '--listen', listen];
  const child = spawn(process.execPath, args, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const exited = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`the server exited with ${code} before it listened`))));
  const ready = (async () => {
    let port: number | undefined;
    for await (const line of lines) {
      const m = /^ready (\d+)$/.exec(line);
      if (m === null) continue;
      port = Number(m[1]);
      break;
    }
    if (port === undefined) throw new Error('the server closed its stdout before it listened');
    child.stdout?.pipe(process.stderr, { end: false });
    return port;
  })();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('the server did not listen within 60 s')), 60_000);
  });
  try {
    return { child, port: await Promise.race([ready, exited, timeout]) };
  } catch (err) {
    await stopServer(child);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/** Users, then login events with generate_series; VACUUM sets hint bits so that no timed read writes. */
export async function seed(url: string, rows: number): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(`INSERT INTO users (id, email) VALUES ($1, 'bench@example.com'), ($2, 'warmup@example.com')`, [SUBJECT, WARMUP_SUBJECT]);
    const insert = `
      INSERT INTO login_events (${COLUMNS}, user_id)
      SELECT $1::text || '-evt-' || lpad(g::text, 8, '0'),
             timestamptz '2024-01-01 00:00:00Z' + g * interval '1 second' + CASE WHEN g % 10 = 0 THEN (g % 1000) * interval '1 microsecond' ELSE interval '0' END,
             '10.' || (g >> 16) % 256 || '.' || (g >> 8) % 256 || '.' || g % 256,
             'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36',
             (ARRAY['password', 'google', 'github', 'saml'])[1 + g % 4],
             g % 13 <> 0,
             g % 100,
             CASE WHEN g % 5 = 0 THEN 'new_device,unusual_location' END,
             'DE', 'Berlin', $1::text
      FROM generate_series(1, $2::int) AS g`;
    await c.query(insert, [SUBJECT, rows]);
    await c.query(insert, [WARMUP_SUBJECT, WARMUP_ROWS]);
    await c.query('VACUUM ANALYZE login_events');
  } finally {
    await c.end();
  }
}

async function loginEventsExportSql(url: string): Promise<string> {
  const db = await openDatabase({ kind: 'postgres', url, poolMax: 1 });
  try {
    const map = await loadDataMap(DATA_MAP);
    const category = map.categories.find((c) => c.name === 'login_events');
    if (category === undefined) throw new Error(`${DATA_MAP} has no login_events category`);
    const q = exportQuery(category, await checkDataMapAgainstDatabase(db.knex, map, DATA_MAP), SUBJECT);
    return db.knex.raw(q.sql, q.bindings).toQuery();
  } finally {
    await db.close();
  }
}

function timePsql(psql: string, url: string, command: string): number {
  const start = performance.now();
  execFileSync(psql, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', command], { stdio: ['ignore', 'ignore', 'inherit'] });
  return (performance.now() - start) / 1000;
}

/** Counts the streamed records without building the document. */
async function exportAndDiscard(address: string, token: string, userId: string, expected: number): Promise<void> {
  const { client, close } = connectPrivacyService(address, token);
  try {
    let records = 0;
    let loginEvents = 0;
    for await (const m of client.exportUser({ userId, reason: '' })) {
      if (m.part?.$case !== 'batch') continue;
      records += m.part.value.records.length;
      if (m.part.value.category === 'login_events') loginEvents += m.part.value.records.length;
    }
    if (loginEvents !== expected) throw new Error(`exported ${loginEvents} login events of ${userId}, expected ${expected} (${records} records in all)`);
  } finally {
    close();
  }
}

/** The CLI's receiving path (document assembly and SHA-256 check) with a writer that drops the bytes. */
async function receiveAndDiscard(address: string, token: string, expected: number): Promise<void> {
  const { client, close } = connectPrivacyService(address, token);
  try {
    const r = await receiveExport(client.exportUser({ userId: SUBJECT, reason: '' }), () => undefined);
    if (r.records < expected) throw new Error(`received ${r.records} records, expected at least ${expected}`);
  } finally {
    close();
  }
}

/**
 * The server's RSS growth: the baseline is VmRSS now; the peak is the larger of VmRSS sampled
 * every 50 ms and VmHWM, whose high-water mark is reset first (writing 5 to clear_refs) so that
 * it covers only the measured interval.
 */
export class RssProbe {
  readonly baselineMb: number;
  private peakKb: number;
  private readonly hwmReset: boolean;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pid: number) {
    try {
      writeFileSync(`/proc/${pid}/clear_refs`, '5');
      this.hwmReset = true;
    } catch {
      this.hwmReset = false; // not permitted here: the samples alone give the peak
    }
    const kb = this.read('VmRSS');
    this.baselineMb = kb / 1024;
    this.peakKb = kb;
    this.timer = setInterval(() => {
      this.peakKb = Math.max(this.peakKb, this.read('VmRSS'));
    }, 50);
  }

  /** Growth over the baseline in MB. */
  stop(): number {
    clearInterval(this.timer);
    this.peakKb = Math.max(this.peakKb, this.read('VmRSS'), this.hwmReset ? this.read('VmHWM') : 0);
    return this.peakKb / 1024 - this.baselineMb;
  }

  /** The peak in MB (once stopped). */
  get peakMb(): number {
    return this.peakKb / 1024;
  }

  private read(field: string): number {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${this.pid}/status`, 'utf8'));
    if (!m) throw new Error(`no ${field} in /proc/${this.pid}/status`);
    return Number(m[1]);
  }
}
