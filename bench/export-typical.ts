import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { mintLocalToken } from '../src/auth/local-key.js';
import { receiveExport } from '../src/client/export-receiver.js';
import { connectPrivacyService } from '../src/client/privacy-client.js';
import { loadDemoData } from '../src/store/demo-data.js';
import { openDatabase } from '../src/store/database.js';
import { withServerOnPostgres } from './export.js';
import { cpuMeters, postmasterPid } from './fanout/cpu.js';
import { intFlag } from './flags.js';

/**
 * Exports of a typical subject (the demo's user-id-123: 59 records over eleven categories) by
 * CLIENTS concurrent clients, each on its own connection, one export after another for SECONDS
 * seconds, against a server in its own process on PostgreSQL (LETHE_MAX_CONCURRENT_EXPORTS set
 * to CLIENTS, so that none is refused). Each export is received whole and its digest checked,
 * as `lethe export` does. Prints the latency percentiles and the exports per second.
 *
 * Flags: --clients N (default 16), --seconds N (default 10).
 */

const DATA_MAP = fileURLToPath(new URL('../datamaps/identity.yaml', import.meta.url));
const SUBJECT = 'user-id-123';
const WARMUP_EXPORTS = 50;

export async function run(args: string[]): Promise<void> {
  const clients = intFlag(args, '--clients', 16);
  const seconds = intFlag(args, '--seconds', 10);
  await withServerOnPostgres(
    { LETHE_DATA_MAP: DATA_MAP, LETHE_MAX_CONCURRENT_EXPORTS: String(clients) },
    async ({ url, dataDir, address, serverPid, clusterDataDir }) => {
      const db = await openDatabase({ kind: 'postgres', url, poolMax: 1 });
      await loadDemoData(db.knex).finally(() => db.close());
      const token = await mintLocalToken(dataDir, SUBJECT, 3600);
      const conns = Array.from({ length: clients }, () => connectPrivacyService(address, token));
      try {
        const once = async (client: (typeof conns)[number]['client']): Promise<number> => {
          const t0 = performance.now();
          const r = await receiveExport(client.exportUser({ userId: SUBJECT, reason: '' }), () => undefined);
          if (r.records === 0) throw new Error('an empty export');
          return performance.now() - t0;
        };
        for (let i = 0; i < WARMUP_EXPORTS; i++) {
          const c = conns[i % clients];
          if (c !== undefined) await once(c.client);
        }

        const latencies: number[] = [];
        let errors = 0;
        const load = loadavg()[0] ?? 0;
        const meters = cpuMeters(serverPid, postmasterPid(clusterDataDir));
        const t0 = performance.now();
        const until = t0 + seconds * 1000;
        await Promise.all(
          conns.map(async ({ client }) => {
            while (performance.now() < until) {
              try {
                latencies.push(await once(client));
              } catch {
                errors++;
              }
            }
          }),
        );
        const elapsed = (performance.now() - t0) / 1000;
        const cpu = meters.read();
        latencies.sort((a, b) => a - b);
        const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0;
        const lines: Array<[string, string]> = [
          ['machine_cpus', String(cpus().length)],
          ['load_average_1m', load.toFixed(2)],
          ['clients', String(clients)],
          ['exports', String(latencies.length)],
          ['export_errors', String(errors)],
          ['typical_export_p50_ms', pct(50).toFixed(1)],
          ['typical_export_p99_ms', pct(99).toFixed(1)],
          ...cpu.perProcess.map(([name, seconds]): [string, string] => [
            `cpu_ms_per_export_${name}`,
            ((1000 * seconds) / Math.max(1, latencies.length)).toFixed(2),
          ]),
          ['machine_cpu_busy_pct', cpu.machineBusyPct.toFixed(0)],
          ['typical_exports_per_s', (latencies.length / elapsed).toFixed(0)],
        ];
        for (const [name, value] of lines) console.log(`${name}: ${value}`);
      } finally {
        for (const c of conns) c.close();
      }
    },
  );
}
