import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from '@nats-io/nats-core';
import pg from 'pg';
import { mintLocalToken } from '../src/auth/local-key.js';
import { type PrivacyClient, connectPrivacyService } from '../src/client/privacy-client.js';
import { ANONYMIZED_SUBJECT, receiptSubject } from '../src/events/subjects.js';
import { openDatabase } from '../src/store/database.js';
import { FIXTURE_HASH_KEY } from '../test/fixtures/downstream/index.js';
import { requireNatsServer, startNatsServer, type NatsServer } from '../test/support/nats.js';
import { type PostgresCluster, freePort, requirePostgres, startPostgres } from '../test/support/postgres.js';
import { natsClient } from '../test/support/streams.js';
import { benchCpuSeconds, cpuMetersOf, cpuSeconds, findPid, postmasterPid, treeCpuSeconds } from './fanout/cpu.js';
import { LetheProcess, grpcServing } from './fanout/processes.js';
import { intFlag } from './flags.js';
import { type StreamEvent, readStream } from './fanout/stream.js';
import { DOWNSTREAM, type DownstreamService, seedIdentity, userId } from './fanout/services.js';

/**
 * The fanout benchmark: a Lethe server and three purge sidecars (orders, analytics, search),
 * each in its own process with its own database on one throwaway PostgreSQL cluster, and a
 * throwaway nats-server with JetStream. ForgetUser is called at a steady RATE per second for
 * SECONDS seconds, scheduled by the wall clock (call i at start + i/RATE, not waiting for the
 * calls before it, at most MAX_IN_FLIGHT at once), each for a different user. Then the bench
 * waits (at most 120 s) until every forget is `completed` in the ledger, and reports per request
 * the time from ForgetUser's response (Date.now() on arrival) to the last receipt recorded
 * (max `received_at` of its confirmations).
 *
 * Figures, last: forgets (successful calls), forget_rate_per_s (forgets over the time from the
 * first call to the last response), forget_errors, receipt_latency_{p50,p99,max}_ms and
 * events_lost: forget requests in the ledger without a `purged` confirmation from each of the
 * three services at the end (must be 0; the bench exits with 1 otherwise). Before them: the
 * machine, the load average, the forget call's own latency, the CPU each process used from the
 * first call until every forget completed (per cent of one CPU), the latency per service and in
 * the first and last tenth of the schedule, the path of each request's last receipt (response →
 * anonymization event stored in the stream → its sidecar starts the purge → receipt stored →
 * receipt recorded in the ledger; stream times from JetStream, purge start from `purged_at`),
 * and a check that the stream holds exactly one anonymization event per forget request.
 *
 * Twenty forgets run first as a warm-up, one after the other (their figures are not counted).
 *
 * Flags: --rate N (default 100), --seconds N (default 30), --max-in-flight N (default 200),
 * --profile DIR (the server and the sidecars write V8 CPU profiles there when they stop),
 * --sidecar-concurrency N (LETHE_SIDECAR_CONCURRENCY of each sidecar; the sidecar's default when absent),
 * --warmup-seconds N (after the twenty, N seconds more at RATE before the measured calls, so that
 * every process's pools, prepared statements and JIT are warm: a steady state; default 0).
 */

const WARMUP_FORGETS = 20;
const COMPLETION_TIMEOUT_MS = 120_000;
const STREAM = 'LETHE_PRIVACY';
const PRINCIPAL = 'bench';
const RECEIPT_PREFIX = receiptSubject('');

export async function run(args: string[]): Promise<void> {
  const rate = intFlag(args, '--rate', 100);
  const seconds = intFlag(args, '--seconds', 30);
  const maxInFlight = intFlag(args, '--max-in-flight', 200);
  const forgets = rate * seconds;
  const warmupSeconds = args.includes('--warmup-seconds') ? intFlag(args, '--warmup-seconds', 1) : 0;
  const warmup = WARMUP_FORGETS + warmupSeconds * rate;
  const users = warmup + forgets;
  const at = args.indexOf('--profile');
  const nodeFlags = at >= 0 ? ['--cpu-prof', `--cpu-prof-dir=${args[at + 1] ?? '.'}`] : [];
  const sidecarConcurrency = args.includes('--sidecar-concurrency') ? intFlag(args, '--sidecar-concurrency', 1) : undefined;

  const pgBin = requirePostgres();
  if (pgBin === undefined) throw new Error('PostgreSQL binaries not found: apt-get install -y postgresql, or set LETHE_PG_BIN');
  const natsBin = requireNatsServer();
  if (natsBin === undefined) throw new Error('nats-server not found: apt-get install -y nats-server, or set LETHE_NATS_SERVER');

  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-bench-fanout-'));
  const processes: LetheProcess[] = [];
  let cluster: PostgresCluster | undefined;
  let nats: NatsServer | undefined;
  let ledgerDb: pg.Client | undefined;
  let nc: NatsConnection | undefined;
  let grpc: { client: PrivacyClient; close(): void } | undefined;
  try {
    [cluster, nats] = await Promise.all([startPostgres(pgBin), startNatsServer(natsBin)]);
    const serverUrl = await cluster.createDatabase('lethe_fanout');
    const serviceUrls = new Map<string, string>();
    for (const s of DOWNSTREAM) serviceUrls.set(s.name, await cluster.createDatabase(`fanout_${s.name}`));

    const seedStart = performance.now();
    const server = await startServer(serverUrl, nats.url, dataDir, processes, nodeFlags);
    const downstreamRows = await Promise.all(DOWNSTREAM.map((s) => prepareDownstream(s, serviceUrls.get(s.name) ?? '', users)));
    await Promise.all(DOWNSTREAM.map((s) => startSidecar(s, serviceUrls.get(s.name) ?? '', nats?.url ?? '', processes, nodeFlags, sidecarConcurrency)));
    ledgerDb = new pg.Client({ connectionString: serverUrl });
    await ledgerDb.connect();
    const identity = await openDatabase({ kind: 'postgres', url: serverUrl, poolMax: 1 });
    await seedIdentity(identity.knex, users).finally(() => identity.close());
    const seedSeconds = (performance.now() - seedStart) / 1000;

    const token = await mintLocalToken(dataDir, PRINCIPAL, 600);
    grpc = connectPrivacyService(`127.0.0.1:${server.port}`, token);
    const client = grpc.client;

    // Warm-up: the server's pools and JIT, the sidecars' consumers.
    for (let i = 1; i <= WARMUP_FORGETS; i++) await client.forgetUser({ userId: userId(i), reason: 'benchmark warm-up', idempotencyKey: randomUUID() });
    if (warmupSeconds > 0) await fire(client, { rate, count: warmupSeconds * rate, firstUser: WARMUP_FORGETS + 1, maxInFlight });
    await waitCompleted(ledgerDb, 60_000);

    const loadStart = loadavg()[0] ?? 0;
    const pgPid = postmasterPid(cluster.dataDir);
    const natsPid = findPid([natsBin, '-p', String(nats.port), '-js']);
    const meters = cpuMetersOf([
      ...processes.map((p): [string, () => number] => [p.name, () => cpuSeconds(p.pid)]),
      ['postgres', () => treeCpuSeconds(pgPid)],
      ['nats', () => (natsPid === 0 ? Number.NaN : cpuSeconds(natsPid))],
      ['bench', benchCpuSeconds],
    ]);
    const cpuStart = performance.now();
    const fired = await fire(client, { rate, count: forgets, firstUser: warmup + 1, maxInFlight });
    const loadEnd = loadavg()[0] ?? 0;
    const lastResponse = Date.now();
    const open = await waitCompleted(ledgerDb, COMPLETION_TIMEOUT_MS);
    const drainSeconds = (Date.now() - lastResponse) / 1000;
    const { perProcess: cpu, machineBusyPct: busyPct } = meters.read();
    const windowSeconds = (performance.now() - cpuStart) / 1000;
    if (open > 0) console.error(`fanout: ${open} forget(s) still not completed after ${COMPLETION_TIMEOUT_MS / 1000} s`);

    const ledger = await readLedger(ledgerDb);
    nc = await natsClient(nats.url);
    const stream = analyzeStream(await readStream(nc, STREAM), ledger);

    const services = DOWNSTREAM.map((s) => s.name);
    const all = fired.responses.flatMap((r) => ledger.get(r.requestId) ?? []);
    const recordedDuringFiring = all.filter((c) => c.receivedMs <= lastResponse).length;
    let lost = 0;
    for (const confirmations of ledger.values()) {
      const purged = new Set(confirmations.filter((c) => c.status === 'purged').map((c) => c.service));
      if (!services.every((s) => purged.has(s))) lost++;
    }
    // Per measured request: the latency to its last receipt, and the path of that receipt.
    const latency: number[] = [];
    const perService = new Map<string, number[]>(services.map((s) => [s, []]));
    const path = { toEvent: [] as number[], toPurge: [] as number[], toReceipt: [] as number[], toRecorded: [] as number[] };
    const tenth = Math.max(1, Math.floor(fired.responses.length / 10));
    const firstTenth: number[] = [];
    const lastTenth: number[] = [];
    for (const r of fired.responses) {
      const confirmations = ledger.get(r.requestId);
      if (confirmations === undefined) {
        lost++; // answered, but not in the ledger
        continue;
      }
      for (const c of confirmations) perService.get(c.service)?.push(c.receivedMs - r.responseMs);
      // Only complete requests have a last receipt; the others are counted in events_lost.
      if (!services.every((s) => confirmations.some((c) => c.service === s && c.status === 'purged'))) continue;
      const last = confirmations.reduce((a, b) => (b.receivedMs > a.receivedMs ? b : a));
      const latencyMs = last.receivedMs - r.responseMs;
      latency.push(latencyMs);
      if (r.index < tenth) firstTenth.push(latencyMs);
      if (r.index >= forgets - tenth) lastTenth.push(latencyMs);
      const eventMs = stream.eventMs.get(r.requestId);
      const receiptMs = stream.receiptMs.get(`${r.requestId}/${last.service}`);
      if (eventMs === undefined || receiptMs === undefined) continue;
      path.toEvent.push(eventMs - r.responseMs);
      path.toPurge.push(last.purgedMs - eventMs);
      path.toReceipt.push(receiptMs - last.purgedMs);
      path.toRecorded.push(last.receivedMs - receiptMs);
    }

    const okSeconds = (fired.lastResponsePerf - fired.firstSendPerf) / 1000;
    const lines: Array<[string, string]> = [
      ['machine_cpus', String(cpus().length)],
      ['node', process.version],
      ['postgres', execFileSync(join(pgBin, 'postgres'), ['--version'], { encoding: 'utf8' }).trim()],
      ['nats_server', execFileSync(natsBin, ['--version'], { encoding: 'utf8' }).trim()],
      ['load_average_1m', loadStart.toFixed(2)],
      ['load_average_1m_end', loadEnd.toFixed(2)],
      ['users', String(users)],
      ['downstream_rows', String(downstreamRows.reduce((a, b) => a + b, 0))],
      ['setup_and_seed_s', seedSeconds.toFixed(1)],
      ['target_rate_per_s', String(rate)],
      ['sidecar_concurrency', sidecarConcurrency === undefined ? 'default' : String(sidecarConcurrency)],
      ['warmup_forgets', String(warmup)],
      ['schedule_lag_max_ms', fired.maxLagMs.toFixed(1)],
      ['in_flight_max', String(fired.maxInFlight)],
      ['forget_call_p50_ms', pct(fired.callMs, 0.5).toFixed(1)],
      ['forget_call_p99_ms', pct(fired.callMs, 0.99).toFixed(1)],
      ['completion_wait_s', drainSeconds.toFixed(1)],
      ['requests_not_completed', String(open)],
      ['machine_cpu_busy_pct', busyPct.toFixed(0)],
      ...cpu.map(([name, s]): [string, string] => [`cpu_pct_${name}`, ((100 * s) / windowSeconds).toFixed(0)]),
      ...services.flatMap((s): Array<[string, string]> => [
        [`receipt_latency_p50_ms_${s}`, ms(pct(perService.get(s) ?? [], 0.5))],
        [`receipt_latency_p99_ms_${s}`, ms(pct(perService.get(s) ?? [], 0.99))],
      ]),
      ['receipts_recorded_before_last_response_pct', all.length === 0 ? 'n/a' : ((100 * recordedDuringFiring) / all.length).toFixed(0)],
      ['receipt_latency_p50_ms_first_tenth', ms(pct(firstTenth, 0.5))],
      ['receipt_latency_p50_ms_last_tenth', ms(pct(lastTenth, 0.5))],
      ['last_receipt_response_to_event_stored_p50_ms', ms(pct(path.toEvent, 0.5))],
      ['last_receipt_response_to_event_stored_p99_ms', ms(pct(path.toEvent, 0.99))],
      ['last_receipt_event_stored_to_purge_start_p50_ms', ms(pct(path.toPurge, 0.5))],
      ['last_receipt_event_stored_to_purge_start_p99_ms', ms(pct(path.toPurge, 0.99))],
      ['last_receipt_purge_start_to_receipt_stored_p50_ms', ms(pct(path.toReceipt, 0.5))],
      ['last_receipt_purge_start_to_receipt_stored_p99_ms', ms(pct(path.toReceipt, 0.99))],
      ['last_receipt_receipt_stored_to_recorded_p50_ms', ms(pct(path.toRecorded, 0.5))],
      ['last_receipt_receipt_stored_to_recorded_p99_ms', ms(pct(path.toRecorded, 0.99))],
      ['stream_anonymized_events', String(stream.events)],
      ['stream_receipts', String(stream.receipts)],
      ['stream_requests_not_exactly_once', String(stream.notExactlyOnce)],
      ['forgets', String(fired.responses.length)],
      ['forget_rate_per_s', (fired.responses.length / okSeconds).toFixed(1)],
      ['forget_errors', String(fired.errors)],
      ['receipt_latency_p50_ms', ms(pct(latency, 0.5))],
      ['receipt_latency_p99_ms', ms(pct(latency, 0.99))],
      ['receipt_latency_max_ms', ms(pct(latency, 1))],
      ['events_lost', String(lost)],
    ];
    for (const [name, value] of lines) console.log(`${name}: ${value}`);
    if (fired.firstError !== undefined) console.error('fanout: first failed call:', fired.firstError);
    if (lost > 0 || stream.notExactlyOnce > 0) {
      console.error(`fanout: ${lost} event(s) lost, ${stream.notExactlyOnce} request(s) without exactly one anonymization event in the stream`);
      process.exitCode = 1;
    }
  } finally {
    grpc?.close();
    await nc?.close().catch(() => undefined);
    await ledgerDb?.end().catch(() => undefined);
    await Promise.all(processes.map((p) => p.stop()));
    await nats?.destroy().catch((err: unknown) => console.error(err));
    await cluster?.destroy().catch((err: unknown) => console.error(err));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const ms = (v: number): string => (Number.isNaN(v) ? 'n/a' : v.toFixed(0));

/** Nearest-rank percentile (q = 1 is the maximum); NaN for no values. */
function pct(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length))) - 1] ?? Number.NaN;
}

async function startServer(databaseUrl: string, natsUrl: string, dataDir: string, processes: LetheProcess[], nodeFlags: string[]): Promise<{ port: number }> {
  const port = await freePort();
  const server = new LetheProcess(
    'server',
    ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir],
    {
      DATABASE_URL: databaseUrl,
      LETHE_ARTIFACT_KEY: randomBytes(32).toString('hex'),
      LETHE_NATS_URL: natsUrl,
      LETHE_DOWNSTREAM_SERVICES: DOWNSTREAM.map((s) => s.name).join(','),
      LETHE_MIGRATE_IDENTITY_SCHEMA: 'true',
      LETHE_LOG_LEVEL: 'warn',
      LETHE_PLATFORM_PRINCIPALS: PRINCIPAL,
    },
    nodeFlags,
  );
  processes.push(server);
  await server.waitReady(() => grpcServing(`127.0.0.1:${port}`));
  return { port };
}

/** The service's database: its schema and a few rows per user. Returns the rows inserted. */
async function prepareDownstream(s: DownstreamService, url: string, users: number): Promise<number> {
  const db = await openDatabase({ kind: 'postgres', url, poolMax: 1 });
  try {
    await s.createSchema(db.knex);
    return await s.seed(db.knex, users);
  } finally {
    await db.close();
  }
}

async function startSidecar(
  s: DownstreamService,
  databaseUrl: string,
  natsUrl: string,
  processes: LetheProcess[],
  nodeFlags: string[],
  concurrency: number | undefined,
): Promise<void> {
  const healthPort = await freePort();
  const env: Record<string, string> = { DATABASE_URL: databaseUrl, LETHE_NATS_URL: natsUrl, LETHE_LOG_LEVEL: 'warn' };
  if (s.usesHash) env.LETHE_HASH_KEY = FIXTURE_HASH_KEY;
  if (concurrency !== undefined) env.LETHE_SIDECAR_CONCURRENCY = String(concurrency);
  const sidecar = new LetheProcess(
    s.name,
    ['sidecar', '--service', s.name, '--data-map', s.dataMap, '--health-listen', `127.0.0.1:${healthPort}`],
    env,
    nodeFlags,
  );
  processes.push(sidecar);
  // "lethe sidecar running" is logged at info too: /readyz answers 200 once it consumes.
  await sidecar.waitReady(async () => (await fetch(`http://127.0.0.1:${healthPort}/readyz`, { signal: AbortSignal.timeout(1_000) })).status === 200);
}

interface Fired {
  readonly responses: Array<{ index: number; requestId: string; responseMs: number }>;
  readonly callMs: number[];
  readonly errors: number;
  readonly firstError: unknown;
  readonly maxLagMs: number;
  readonly maxInFlight: number;
  readonly firstSendPerf: number;
  readonly lastResponsePerf: number;
}

/** Call i starts at start + i/rate (never waiting for earlier calls), with at most maxInFlight outstanding. */
async function fire(client: PrivacyClient, o: { rate: number; count: number; firstUser: number; maxInFlight: number }): Promise<Fired> {
  const responses: Array<{ index: number; requestId: string; responseMs: number }> = [];
  const callMs: number[] = [];
  const pending = new Set<Promise<void>>();
  let errors = 0;
  let firstError: unknown;
  let maxLagMs = 0;
  let maxInFlight = 0;
  let lastResponsePerf = 0;
  const intervalMs = 1000 / o.rate;
  const start = performance.now();
  for (let i = 0; i < o.count; i++) {
    const due = start + i * intervalMs;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    while (pending.size >= o.maxInFlight) await Promise.race(pending);
    maxLagMs = Math.max(maxLagMs, performance.now() - due);
    const sent = performance.now();
    const call: Promise<void> = client.forgetUser({ userId: userId(o.firstUser + i), reason: 'benchmark', idempotencyKey: randomUUID() }).then(
      (r) => {
        const responseMs = Date.now();
        lastResponsePerf = performance.now();
        responses.push({ index: i, requestId: r.requestId, responseMs });
        callMs.push(lastResponsePerf - sent);
      },
      (err: unknown) => {
        errors++;
        firstError ??= err;
      },
    );
    pending.add(call);
    void call.finally(() => pending.delete(call));
    maxInFlight = Math.max(maxInFlight, pending.size);
  }
  await Promise.all(pending);
  return { responses, callMs, errors, firstError, maxLagMs, maxInFlight, firstSendPerf: start, lastResponsePerf };
}

/** Waits until no forget request is open; returns how many still are when `timeoutMs` runs out. */
async function waitCompleted(db: pg.Client, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await db.query<{ open: string }>(`SELECT count(*) AS open FROM lethe_privacy_requests WHERE type = 'forget' AND state <> 'completed'`);
    const open = Number(r.rows[0]?.open ?? 0);
    if (open === 0 || Date.now() > deadline) return open;
    await sleep(100);
  }
}

interface Confirmation {
  readonly service: string;
  readonly status: string;
  readonly purgedMs: number;
  readonly receivedMs: number;
}

/** Every forget request with its confirmations (times in epoch ms, to the microsecond). */
async function readLedger(db: pg.Client): Promise<Map<string, Confirmation[]>> {
  const requests = new Map<string, Confirmation[]>();
  for (const r of (await db.query<{ id: string }>(`SELECT id FROM lethe_privacy_requests WHERE type = 'forget'`)).rows) requests.set(r.id, []);
  const confirmations = await db.query<{ request_id: string; service: string; status: string; purged_ms: string; received_ms: string }>(
    `SELECT request_id, service, status, extract(epoch FROM purged_at) * 1000 AS purged_ms, extract(epoch FROM received_at) * 1000 AS received_ms FROM lethe_confirmations`,
  );
  for (const c of confirmations.rows) {
    requests.get(c.request_id)?.push({ service: c.service, status: c.status, purgedMs: Number(c.purged_ms), receivedMs: Number(c.received_ms) });
  }
  return requests;
}

/**
 * When each request's anonymization event and each of its receipts (`<request id>/<service>`)
 * was first stored, and whether the stream holds exactly one anonymization event per forget
 * request in the ledger (and none for any other request).
 */
function analyzeStream(events: readonly StreamEvent[], ledger: ReadonlyMap<string, unknown>) {
  const eventMs = new Map<string, number>();
  const receiptMs = new Map<string, number>();
  const perRequest = new Map<string, number>();
  let anonymized = 0;
  let receipts = 0;
  for (const e of events) {
    const id = e.requestId ?? '(none)';
    if (e.subject === ANONYMIZED_SUBJECT) {
      anonymized++;
      perRequest.set(id, (perRequest.get(id) ?? 0) + 1);
      eventMs.set(id, Math.min(e.storedMs, eventMs.get(id) ?? Infinity));
    } else if (e.subject.startsWith(RECEIPT_PREFIX)) {
      receipts++;
      const key = `${id}/${e.subject.slice(RECEIPT_PREFIX.length)}`;
      receiptMs.set(key, Math.min(e.storedMs, receiptMs.get(key) ?? Infinity));
    }
  }
  let notExactlyOnce = [...perRequest.keys()].filter((id) => !ledger.has(id)).length;
  for (const id of ledger.keys()) if (perRequest.get(id) !== 1) notExactlyOnce++;
  return { eventMs, receiptMs, events: anonymized, receipts, notExactlyOnce };
}
