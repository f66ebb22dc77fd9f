import { writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mintLocalToken } from '../src/auth/local-key.js';
import { receiveExport } from '../src/client/export-receiver.js';
import { connectPrivacyService } from '../src/client/privacy-client.js';
import { loadDemoData } from '../src/store/demo-data.js';
import { openDatabase } from '../src/store/database.js';
import { PinnedConnection } from '../src/store/session.js';
import { loadDataMap } from '../src/privacy/data-map.js';
import { prepareServerDataMap } from '../src/privacy/lethe-tables.js';
import { SnapshotReader } from '../src/privacy/snapshot-reader.js';
import { ExportUserResponse } from '../src/gen/lethe/privacy/v1/privacy.js';
import { startReadyProcess, stopServer, withServerOnPostgres } from './export.js';
import { benchCpuSeconds, cpuMeters, cpuMetersOf, cpuSeconds, postmasterPid, treeCpuSeconds } from './fanout/cpu.js';
import { intFlag } from './flags.js';

/**
 * Exports of a typical subject (the demo's user-id-123: 59 records over eleven categories) by
 * CLIENTS concurrent clients, each on its own connection, one export after another for SECONDS
 * seconds, against a server in its own process on PostgreSQL (LETHE_MAX_CONCURRENT_EXPORTS set
 * to CLIENTS, so that none is refused). Each export is received whole and its digest checked,
 * as `lethe export` does. Prints the latency percentiles and the exports per second.
 *
 * Then two floors, each with the same number of clients for the same time:
 * - PostgreSQL's (`postgres_floor_*`): each client on a connection of its own runs the export's
 *   contents statement for the subject, prepared, as the server does, and nothing else: the
 *   records read, without authorization, ledger entry, audit entry or gRPC;
 * - gRPC's (`grpc_floor_*`): a bare grpc-js server (grpc-floor-server.ts) answers every call with
 *   the messages of one real export, captured and sent as they are, with no token check and no
 *   database; the clients receive and check them as above.
 * Together they bound from below what any export of this subject costs on this machine.
 *
 * Flags: --clients N (default 16), --seconds N (default 10).
 */

const DATA_MAP = fileURLToPath(new URL('../datamaps/identity.yaml', import.meta.url));
const FLOOR_SERVER = fileURLToPath(new URL('./grpc-floor-server.ts', import.meta.url));
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
      const load = loadavg()[0] ?? 0;
      const pgPid = postmasterPid(clusterDataDir);
      const lethe = await closedLoop(clients, seconds, connectedExports(address, token), () => cpuMeters(serverPid, pgPid));
      const postgresFloor = await closedLoop(clients, seconds, await contentsReads(url, clients), () =>
        cpuMetersOf([
          ['postgres', () => treeCpuSeconds(pgPid)],
          ['bench', benchCpuSeconds],
        ]),
      );

      const messagesFile = join(dataDir, 'floor-messages.json');
      writeFileSync(messagesFile, JSON.stringify(await capturedExport(address, token)));
      const floorServer = await startReadyProcess(FLOOR_SERVER, { env: { LETHE_BENCH_FLOOR_MESSAGES: messagesFile } });
      let floor: LoopFigures;
      try {
        const floorPid = floorServer.child.pid ?? 0;
        floor = await closedLoop(clients, seconds, connectedExports(`127.0.0.1:${floorServer.port}`, token), () =>
          cpuMetersOf([
            ['server', () => cpuSeconds(floorPid)],
            ['bench', benchCpuSeconds],
          ]),
        );
      } finally {
        await stopServer(floorServer.child);
      }

      const lines: Array<[string, string]> = [
        ['machine_cpus', String(cpus().length)],
        ['load_average_1m', load.toFixed(2)],
        ['clients', String(clients)],
        ...figureLines('grpc_floor_', floor),
        ...figureLines('postgres_floor_', postgresFloor),
        ...figureLines('', lethe),
      ];
      for (const [name, value] of lines) console.log(`${name}: ${value}`);
    },
  );
}

interface LoopFigures {
  readonly latencies: readonly number[];
  readonly errors: number;
  readonly seconds: number;
  readonly cpu: ReturnType<ReturnType<typeof cpuMetersOf>['read']>;
}

/** One client's way of doing the work once, and of letting go of what it holds. */
interface Worker {
  once(): Promise<void>;
  close(): Promise<void>;
}

/** A client per worker, each on its own connection, exporting the subject whole, its digest checked. */
const connectedExports = (address: string, token: string) => (): Worker => {
  const { client, close } = connectPrivacyService(address, token);
  return {
    async once() {
      const r = await receiveExport(client.exportUser({ userId: SUBJECT, reason: '' }), () => undefined);
      if (r.records === 0) throw new Error('an empty export');
    },
    close: async () => close(),
  };
};

/**
 * PostgreSQL's floor: a pooled connection per worker, each running the export's contents
 * statement for the subject (prepared, as the server runs it) and nothing else: no ledger entry,
 * no authorization facts, no snapshot of its own.
 */
async function contentsReads(url: string, clients: number): Promise<() => Worker> {
  const db = await openDatabase({ kind: 'postgres', url, poolMax: clients });
  const map = await loadDataMap(DATA_MAP);
  const prepared = await prepareServerDataMap(db.knex, map, DATA_MAP, undefined);
  const statement = new SnapshotReader(prepared.dataMap, prepared.columnTypes).contentsStatement(SUBJECT);
  if (statement === undefined) throw new Error('the data map exports nothing');
  let open = clients;
  return () => {
    const conn = PinnedConnection.acquire(db.knex);
    return {
      async once() {
        const c = await conn;
        const [rows] = (await c?.send([statement])) ?? [];
        if (rows?.length !== 1) throw new Error('no contents row');
      },
      async close() {
        await (await conn)?.release();
        if (--open === 0) await db.close();
      },
    };
  };
}

/**
 * `clients` workers doing their work one time after another for `seconds` seconds after a
 * warm-up; the latency of each time.
 */
async function closedLoop(clients: number, seconds: number, worker: () => Worker, meter: () => ReturnType<typeof cpuMetersOf>): Promise<LoopFigures> {
  const workers = Array.from({ length: clients }, worker);
  try {
    const once = async (w: Worker): Promise<number> => {
      const t0 = performance.now();
      await w.once();
      return performance.now() - t0;
    };
    for (let i = 0; i < WARMUP_EXPORTS; i++) {
      const w = workers[i % clients];
      if (w !== undefined) await once(w);
    }
    const latencies: number[] = [];
    let errors = 0;
    const meters = meter();
    const t0 = performance.now();
    const until = t0 + seconds * 1000;
    await Promise.all(
      workers.map(async (w) => {
        while (performance.now() < until) {
          try {
            latencies.push(await once(w));
          } catch {
            errors++;
          }
        }
      }),
    );
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = meters.read();
    return { latencies: latencies.sort((a, b) => a - b), errors, seconds: elapsed, cpu };
  } finally {
    await Promise.all(workers.map((w) => w.close()));
  }
}

/** One export's messages as the server sent them (re-encoded), base64. */
async function capturedExport(address: string, token: string): Promise<string[]> {
  const { client, close } = connectPrivacyService(address, token);
  try {
    const messages: string[] = [];
    for await (const m of client.exportUser({ userId: SUBJECT, reason: '' })) {
      messages.push(Buffer.from(ExportUserResponse.encode(m).finish()).toString('base64'));
    }
    return messages;
  } finally {
    close();
  }
}

function figureLines(prefix: string, f: LoopFigures): Array<[string, string]> {
  const pct = (p: number) => f.latencies[Math.min(f.latencies.length - 1, Math.floor((p / 100) * f.latencies.length))] ?? 0;
  const name = prefix === '' ? 'typical_export' : `${prefix}export`;
  return [
    [`${prefix}exports`, String(f.latencies.length)],
    [`${prefix}export_errors`, String(f.errors)],
    [`${name}_p50_ms`, pct(50).toFixed(1)],
    [`${name}_p99_ms`, pct(99).toFixed(1)],
    ...f.cpu.perProcess.map(([process, seconds]): [string, string] => [
      `${prefix}cpu_ms_per_export_${process}`,
      ((1000 * seconds) / Math.max(1, f.latencies.length)).toFixed(2),
    ]),
    [`${prefix}machine_cpu_busy_pct`, f.cpu.machineBusyPct.toFixed(0)],
    [prefix === '' ? 'typical_exports_per_s' : `${prefix}exports_per_s`, (f.latencies.length / f.seconds).toFixed(0)],
  ];
}
