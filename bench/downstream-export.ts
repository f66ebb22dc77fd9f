import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { mintLocalToken } from '../src/auth/local-key.js';
import { receiveExport } from '../src/client/export-receiver.js';
import { connectPrivacyService } from '../src/client/privacy-client.js';
import { loadSidecarConfig } from '../src/config/sidecar-config.js';
import { PurgeSidecar } from '../src/sidecar/purge-sidecar.js';
import { openDatabase } from '../src/store/database.js';
import { FIXTURE_HASH_KEY, ORDERS_DATA_MAP, createOrdersSchema } from '../test/fixtures/downstream/index.js';
import { requireNatsServer, startNatsServer } from '../test/support/nats.js';
import { requirePostgres, startPostgres } from '../test/support/postgres.js';
import { RssProbe, SUBJECT, seed, startServer, stopServer } from './export.js';

/**
 * Platform-wide export: one subject with ROWS login events on the server, exported through the
 * gRPC API by a server in its own process, first alone, then with three downstream services
 * (each an orders service with DOWNSTREAM_ROWS orders of the subject, each answered by its
 * sidecar over NATS). The client assembles and checks the whole document. Prints the export
 * times and the server's peak RSS growth in each case.
 *
 * Flags: --rows N (default 100,000), --downstream-rows N (default 100,000 per service).
 */

const SERVICES = ['billing', 'orders', 'shipping'];

export async function run(args: string[]): Promise<void> {
  const flag = (name: string, fallback: number) => {
    const at = args.indexOf(name);
    const n = at >= 0 ? Number(args[at + 1]) : fallback;
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} takes a positive integer`);
    return n;
  };
  const rows = flag('--rows', 100_000);
  const downstreamRows = flag('--downstream-rows', 100_000);

  const pgBin = requirePostgres();
  const natsBin = requireNatsServer();
  if (pgBin === undefined || natsBin === undefined) throw new Error('PostgreSQL and nats-server are needed: apt-get install -y postgresql nats-server');
  const cluster = await startPostgres(pgBin);
  const nats = await startNatsServer(natsBin);
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-bench-'));
  const sidecars: PurgeSidecar[] = [];
  try {
    const url = await cluster.createDatabase('lethe_bench');
    // The first server migrates the identity schema; the seed goes in once it has.
    const alone = await measure(url, dataDir, rows, {}, () => seed(url, rows));

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
      { LETHE_NATS_URL: nats.url, LETHE_DOWNSTREAM_SERVICES: SERVICES.join(',') },
      async () => {
        for (const service of SERVICES) sidecars.push(await startSidecar(service, serviceUrls.get(service) ?? '', nats.url, dataDir));
      },
    );

    const lines: Array<[string, string]> = [
      ['machine_cpus', String(cpus().length)],
      ['load_average_1m', (loadavg()[0] ?? 0).toFixed(2)],
      ['rows', String(rows)],
      ['downstream_services', String(SERVICES.length)],
      ['downstream_rows_per_service', String(downstreamRows)],
      ['export_alone_s', alone.seconds.toFixed(2)],
      ['export_with_downstream_s', withDownstream.seconds.toFixed(2)],
      ['export_with_downstream_rows_per_s', ((rows + SERVICES.length * downstreamRows) / withDownstream.seconds).toFixed(0)],
      ['server_rss_growth_alone_mb', alone.rssGrowthMb.toFixed(1)],
      ['server_rss_growth_with_downstream_mb', withDownstream.rssGrowthMb.toFixed(1)],
    ];
    for (const [name, value] of lines) console.log(`${name}: ${value}`);
  } finally {
    for (const s of sidecars) await s.stop();
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
): Promise<{ seconds: number; rssGrowthMb: number }> {
  const started = await startServer(url, dataDir, env);
  try {
    await beforeExport();
    const address = `127.0.0.1:${started.port}`;
    const token = await mintLocalToken(dataDir, SUBJECT, 3600);
    await exportWhole(address, token, expected);
    const rss = new RssProbe(started.child.pid ?? 0);
    const t0 = performance.now();
    await exportWhole(address, token, expected);
    const seconds = (performance.now() - t0) / 1000;
    return { seconds, rssGrowthMb: rss.stop() };
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

async function startSidecar(service: string, databaseUrl: string, natsUrl: string, dataDir: string): Promise<PurgeSidecar> {
  const config = loadSidecarConfig(
    {
      DATABASE_URL: databaseUrl,
      LETHE_NATS_URL: natsUrl,
      LETHE_HASH_KEY: FIXTURE_HASH_KEY,
      LETHE_EXPORT_VERIFY_KEY_FILE: join(dataDir, 'export-signing-key.pub.pem'),
      LETHE_LOG_LEVEL: 'error',
    },
    { service, dataMap: ORDERS_DATA_MAP, healthListen: '127.0.0.1:0' },
  );
  const sidecar = new PurgeSidecar(config, pino({ level: 'error' }, pino.destination(2)));
  await sidecar.start();
  return sidecar;
}
