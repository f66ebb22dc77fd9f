import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { mintLocalToken } from '../src/auth/local-key.js';
import { receiveExport } from '../src/client/export-receiver.js';
import { connectPrivacyService } from '../src/client/privacy-client.js';
import { openDatabase } from '../src/store/database.js';
import { FIXTURE_HASH_KEY, ORDERS_DATA_MAP, createOrdersSchema } from '../test/fixtures/downstream/index.js';
import { requireNatsServer, startNatsServer } from '../test/support/nats.js';
import { requirePostgres, startPostgres } from '../test/support/postgres.js';
import { RssProbe, SUBJECT, seed, startServer, stopServer } from './export.js';

/**
 * Platform-wide export: one subject with ROWS login events on the server, exported through the
 * gRPC API by a server in its own process, first alone, then with three downstream services
 * (each an orders service with DOWNSTREAM_ROWS orders of the subject, each answered by its
 * `lethe sidecar` process over NATS). The client assembles and checks the whole document.
 * Prints, side by side from one run, the export times and rates, the server's and the
 * sidecars' peak RSS and CPU time, and the load average before and after.
 *
 * Flags: --rows N (default 100,000), --downstream-rows N (default 100,000 per service),
 * --cpu-prof DIR (the server and the sidecars write V8 CPU profiles there when they stop).
 */

const SERVICES = ['billing', 'orders', 'shipping'];
const CLI = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

interface Measured {
  readonly seconds: number;
  readonly serverPeakMb: number;
  readonly serverGrowthMb: number;
  /** The largest sidecar's peak, when there are sidecars. */
  readonly sidecarPeakMb?: number;
  /** CPU time (user + system) of the server and of the sidecars together during the export. */
  readonly serverCpuS: number;
  readonly sidecarsCpuS: number;
}

export async function run(args: string[]): Promise<void> {
  const flag = (name: string, fallback: number) => {
    const at = args.indexOf(name);
    const n = at >= 0 ? Number(args[at + 1]) : fallback;
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} takes a positive integer`);
    return n;
  };
  const rows = flag('--rows', 100_000);
  const downstreamRows = flag('--downstream-rows', 100_000);
  const profAt = args.indexOf('--cpu-prof');
  const profDir = profAt >= 0 ? resolve(args[profAt + 1] ?? 'cpu-prof') : undefined;
  if (profDir !== undefined) mkdirSync(profDir, { recursive: true });
  const profEnv: Record<string, string> = profDir === undefined ? {} : { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${profDir}` };

  const pgBin = requirePostgres();
  const natsBin = requireNatsServer();
  if (pgBin === undefined || natsBin === undefined) throw new Error('PostgreSQL and nats-server are needed: apt-get install -y postgresql nats-server');
  const loadBefore = loadavg();
  const cluster = await startPostgres(pgBin);
  const nats = await startNatsServer(natsBin);
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-bench-'));
  const sidecars: ChildProcess[] = [];
  try {
    const url = await cluster.createDatabase('lethe_bench');
    // The first server migrates the identity schema; the seed goes in once it has.
    const alone = await measure(
      url,
      dataDir,
      rows,
      profEnv,
      () => seed(url, rows),
      () => [],
    );

    const serviceUrls = new Map<string, string>();
    for (const service of SERVICES) {
      const serviceUrl = await cluster.createDatabase(`bench_${service}`);
      await seedOrders(serviceUrl, downstreamRows);
      serviceUrls.set(service, serviceUrl);
    }
    const withDownstream = await measure(
      url,
      dataDir,
      rows + SERVICES.length * downstreamRows,
      { ...profEnv, LETHE_NATS_URL: nats.url, LETHE_DOWNSTREAM_SERVICES: SERVICES.join(',') },
      async () => {
        for (const service of SERVICES) sidecars.push(await startSidecar(service, serviceUrls.get(service) ?? '', nats.url, dataDir, profEnv));
      },
      () => sidecars,
    );
    const loadAfter = loadavg();

    const all = rows + SERVICES.length * downstreamRows;
    const downstreamSeconds = withDownstream.seconds - alone.seconds;
    const lines: Array<[string, string]> = [
      ['machine_cpus', String(cpus().length)],
      ['load_average_before', loadBefore.map((l) => l.toFixed(2)).join(' ')],
      ['load_average_after', loadAfter.map((l) => l.toFixed(2)).join(' ')],
      ['rows', String(rows)],
      ['downstream_services', String(SERVICES.length)],
      ['downstream_rows_per_service', String(downstreamRows)],
      ['export_alone_s', alone.seconds.toFixed(2)],
      ['export_alone_rows_per_s', (rows / alone.seconds).toFixed(0)],
      ['export_with_downstream_s', withDownstream.seconds.toFixed(2)],
      ['export_with_downstream_rows_per_s', (all / withDownstream.seconds).toFixed(0)],
      // The downstream parts alone: the extra time over the export without them.
      ['downstream_part_rows_per_s', ((SERVICES.length * downstreamRows) / downstreamSeconds).toFixed(0)],
      ['server_peak_rss_alone_mb', alone.serverPeakMb.toFixed(1)],
      ['server_peak_rss_with_downstream_mb', withDownstream.serverPeakMb.toFixed(1)],
      ['server_rss_growth_alone_mb', alone.serverGrowthMb.toFixed(1)],
      ['server_rss_growth_with_downstream_mb', withDownstream.serverGrowthMb.toFixed(1)],
      ['sidecar_peak_rss_mb', (withDownstream.sidecarPeakMb ?? 0).toFixed(1)],
      // CPU time does not depend on what else runs on the machine, as the wall clock does.
      ['server_cpu_alone_s', alone.serverCpuS.toFixed(2)],
      ['server_cpu_with_downstream_s', withDownstream.serverCpuS.toFixed(2)],
      ['sidecars_cpu_s', withDownstream.sidecarsCpuS.toFixed(2)],
      [
        'cpu_us_per_downstream_row',
        ((1e6 * (withDownstream.serverCpuS - alone.serverCpuS + withDownstream.sidecarsCpuS)) / (SERVICES.length * downstreamRows)).toFixed(1),
      ],
      ['cpu_us_per_server_row', ((1e6 * alone.serverCpuS) / rows).toFixed(1)],
    ];
    for (const [name, value] of lines) console.log(`${name}: ${value}`);
  } finally {
    for (const s of sidecars) await stopServer(s);
    await nats.destroy();
    await cluster.destroy();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** One server process: a warm-up export, then the measured one, checked record for record. */
async function measure(
  url: string,
  dataDir: string,
  expected: number,
  env: Record<string, string>,
  beforeExport: () => Promise<void>,
  sidecars: () => readonly ChildProcess[],
): Promise<Measured> {
  const started = await startServer(url, dataDir, env);
  try {
    await beforeExport();
    const address = `127.0.0.1:${started.port}`;
    const token = await mintLocalToken(dataDir, SUBJECT, 3600);
    await exportWhole(address, token, expected);
    const serverPid = started.child.pid ?? 0;
    const sidecarPids = sidecars().map((s) => s.pid ?? 0);
    const rss = new RssProbe(serverPid);
    const sidecarRss = sidecarPids.map((pid) => new RssProbe(pid));
    const cpu0 = [cpuSeconds(serverPid), sidecarPids.reduce((n, pid) => n + cpuSeconds(pid), 0)];
    const t0 = performance.now();
    await exportWhole(address, token, expected);
    const seconds = (performance.now() - t0) / 1000;
    const serverCpuS = cpuSeconds(serverPid) - (cpu0[0] ?? 0);
    const sidecarsCpuS = sidecarPids.reduce((n, pid) => n + cpuSeconds(pid), 0) - (cpu0[1] ?? 0);
    const serverGrowthMb = rss.stop();
    for (const p of sidecarRss) p.stop();
    return {
      seconds,
      serverCpuS,
      sidecarsCpuS,
      serverPeakMb: rss.peakMb,
      serverGrowthMb,
      ...(sidecarRss.length > 0 ? { sidecarPeakMb: Math.max(...sidecarRss.map((p) => p.peakMb)) } : {}),
    };
  } finally {
    await stopServer(started.child);
  }
}

async function exportWhole(address: string, token: string, atLeast: number): Promise<void> {
  const { client, close } = connectPrivacyService(address, token);
  try {
    const r = await receiveExport(client.exportUser({ userId: SUBJECT, reason: '' }), () => undefined);
    if (r.partial) throw new Error(`the export is partial: ${JSON.stringify(r.downstream)}`);
    if (r.records < atLeast) throw new Error(`received ${r.records} records, expected at least ${atLeast}`);
  } finally {
    close();
  }
}

async function seedOrders(url: string, n: number): Promise<void> {
  const db = await openDatabase({ kind: 'postgres', url, poolMax: 1 });
  try {
    await createOrdersSchema(db.knex);
    await db.knex.raw(
      `INSERT INTO orders (user_id, email, customer_name, phone, total_cents)
       SELECT ?, 'bench@example.com', 'Bench Customer', '+33 6 12 34 56 78', g FROM generate_series(1, ?::int) g`,
      [SUBJECT, n],
    );
    await db.knex.raw('VACUUM ANALYZE orders');
  } finally {
    await db.close();
  }
}

/** `lethe sidecar` in its own process, once it answers export requests. */
async function startSidecar(service: string, databaseUrl: string, natsUrl: string, dataDir: string, env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CLI, 'sidecar', '--service', service, '--data-map', ORDERS_DATA_MAP, '--health-listen', '127.0.0.1:0'],
    {
      env: {
        ...process.env,
        ...env,
        DATABASE_URL: databaseUrl,
        LETHE_NATS_URL: natsUrl,
        LETHE_HASH_KEY: FIXTURE_HASH_KEY,
        LETHE_EXPORT_VERIFY_KEY_FILE: join(dataDir, 'export-signing-key.pub.pem'),
        LETHE_LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      (async () => {
        for await (const line of lines) if (line.includes('"answering export requests"')) return;
        throw new Error(`the ${service} sidecar closed its output before it answered exports`);
      })(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the ${service} sidecar did not start within 60 s`)), 60_000);
      }),
    ]);
  } catch (err) {
    await stopServer(child);
    throw err;
  } finally {
    clearTimeout(timer);
  }
  // Its log goes on; read and dropped, so that a full pipe never stops it.
  child.stdout?.resume();
  return child;
}

/** User plus system CPU time of a process so far (/proc/<pid>/stat, in clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
