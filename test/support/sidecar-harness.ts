import { type ChildProcess, spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { AckPolicy, type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect } from 'vitest';
import { type PurgedEvent, anonymizedEventFor, parsePurgedEvent } from '../../src/events/cloudevents.js';
import { ensureStream } from '../../src/events/nats.js';
import { ANONYMIZED_SUBJECT, RECEIPTS_FILTER } from '../../src/events/subjects.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { FIXTURE_HASH_KEY } from '../fixtures/downstream/index.js';
import { type TestSidecar, startTestSidecar } from '../fixtures/downstream/sidecar.js';
import { type NatsServer, requireNatsServer, startNatsServer } from './nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from './postgres.js';

/**
 * The set-up of the `lethe sidecar` suites (test/integration/sidecar-*.test.ts): a real PostgreSQL
 * and a real nats-server (Debian's 2.9.10 here). Each test gets a fresh privacy stream (so each
 * durable consumer sees only that test's events) and its own databases; the health test, which
 * stops NATS, its own nats-server.
 */

export const STREAM = 'LETHE_PRIVACY';

/** Polls `probe` until it returns a value other than undefined; fails after `timeoutMs`. */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export const hmacHex = (value: string) => createHmac('sha256', Buffer.from(FIXTURE_HASH_KEY, 'hex')).update(value, 'utf8').digest('hex');

/** A test's view of NATS: a client, a receipt collector, and a way to publish events. */
export interface Bus {
  readonly server: NatsServer;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** Every receipt published on privacy.v1.user.purged.> (core NATS: duplicates included). */
  readonly receipts: Array<{ subject: string; event: PurgedEvent }>;
  publishAnonymized(userId: string, requestId?: string): Promise<string>;
  receiptsFor(requestId: string, service?: string): PurgedEvent[];
  close(): Promise<void>;
}

/**
 * A client of a nats-server, with a fresh privacy stream (any earlier one, and its consumers,
 * deleted). By default the stream is created as the server's relay creates it;
 * `streamSubjects` makes a different one. Without `listen: false`, a core subscription
 * collects every receipt published.
 */
async function startBus(server: NatsServer, opts: { streamSubjects?: string[]; listen?: boolean } = {}): Promise<Bus> {
  const nc = await connect({ servers: server.url, name: 'sidecar-test', maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  let jsm = await jetstreamManager(nc);
  if ((await jsm.streams.names().next()).includes(STREAM)) await jsm.streams.delete(STREAM);
  // The privacy stream exists before any event is published (the server's relay creates it).
  if (opts.streamSubjects === undefined) jsm = await ensureStream(nc, { name: STREAM, replicas: 1, duplicateWindowMs: 120_000, maxAgeMs: 86_400_000 });
  else await jsm.streams.add({ name: STREAM, subjects: opts.streamSubjects });
  const js = jetstream(nc);
  const receipts: Array<{ subject: string; event: PurgedEvent }> = [];
  const sub: Subscription | undefined =
    opts.listen === false
      ? undefined
      : nc.subscribe(RECEIPTS_FILTER, {
          callback: (err, msg) => {
            if (err) return;
            const event = parsePurgedEvent(msg.data);
            if (event === undefined) throw new Error(`an invalid receipt was published on ${msg.subject}`);
            receipts.push({ subject: msg.subject, event });
          },
        });
  await nc.flush();
  return {
    server,
    nc,
    js,
    jsm,
    receipts,
    async publishAnonymized(userId, requestId = randomUUID()) {
      const event = anonymizedEventFor({ source: '/lethe/test', userId, requestId, anonymizedAt: new Date() });
      const ack = await js.publish(ANONYMIZED_SUBJECT, JSON.stringify(event), { msgID: event.id });
      expect(ack.duplicate).toBe(false);
      return requestId;
    },
    receiptsFor(requestId, service) {
      return receipts.filter((r) => r.event.data.request_id === requestId && (service === undefined || r.event.data.service === service)).map((r) => r.event);
    },
    async close() {
      sub?.unsubscribe();
      await nc.close();
    },
  };
}

/** What a ledger-side consumer of receipts sees: the receipts the stream stored. */
export async function storedReceipts(b: Bus): Promise<PurgedEvent[]> {
  const name = `ledger-probe-${randomUUID().slice(0, 8)}`;
  await b.jsm.consumers.add(STREAM, { durable_name: name, filter_subject: RECEIPTS_FILTER, ack_policy: AckPolicy.Explicit });
  const consumer = await b.js.consumers.get(STREAM, name);
  const stored: PurgedEvent[] = [];
  for await (const m of await consumer.fetch({ max_messages: 100, expires: 2_000 })) {
    const e = parsePurgedEvent(m.data);
    if (e === undefined) throw new Error(`an invalid receipt is stored at sequence ${m.seq}`);
    stored.push(e);
    m.ack();
  }
  await b.jsm.consumers.delete(STREAM, name);
  return stored;
}

/** `lethe sidecar …` as a child process: the real command, run from the sources with tsx. */
export function spawnLethe(
  args: string[],
  env: Record<string, string>,
): {
  child: ChildProcess;
  output(): string;
  lines(): Array<Record<string, unknown>>;
  exited(timeoutMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
} {
  let output = '';
  const child = spawn(process.execPath, ['--import', 'tsx', join(process.cwd(), 'src/cli/main.ts'), ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  return {
    child,
    output: () => output,
    lines: () =>
      output
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    exited: (timeoutMs = 60_000) =>
      eventually(
        'the command to exit',
        () => (child.exitCode !== null || child.signalCode !== null ? { code: child.exitCode, signal: child.signalCode } : undefined),
        timeoutMs,
      ),
  };
}

/**
 * `describe('lethe sidecar (PostgreSQL + NATS): <title>')`, run where PostgreSQL and nats-server
 * are installed, with the suite's helpers (sidecarSuite) for the tests.
 */
export function describeSidecar(title: string, tests: (suite: SidecarSuite) => void): void {
  const pgBin = requirePostgres();
  const natsBin = requireNatsServer();
  describe.runIf(pgBin !== undefined && natsBin !== undefined)(`lethe sidecar (PostgreSQL + NATS): ${title}`, () => {
    tests(sidecarSuite(pgBin ?? '', natsBin ?? ''));
  });
}

type SidecarSuite = ReturnType<typeof sidecarSuite>;

/**
 * Registers the suite's hooks (a PostgreSQL cluster and a nats-server for the file; after each
 * test, what it started, in reverse order) and returns the helpers the tests build on.
 */
function sidecarSuite(pgBin: string, natsBin: string) {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  const cleanups: Array<() => Promise<unknown>> = [];
  const later = (fn: () => Promise<unknown>) => cleanups.push(fn);

  beforeAll(async () => {
    cluster = await startPostgres(pgBin);
    nats = await startNatsServer(natsBin);
  });
  afterEach(async () => {
    // Sidecars first, then databases and NATS servers: in reverse order of creation.
    for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => undefined);
  });
  afterAll(async () => {
    await nats?.destroy();
    await cluster?.destroy();
  });

  async function bus(opts: Parameters<typeof startBus>[1] & { ownServer?: boolean } = {}): Promise<Bus> {
    let server = nats;
    if (opts.ownServer === true) {
      const own = await startNatsServer(natsBin);
      later(() => own.destroy());
      server = own;
    }
    const b = await startBus(server, opts);
    later(() => b.close());
    return b;
  }
  async function database(create: (knex: Database['knex']) => Promise<void>): Promise<{ url: string; db: Database }> {
    const url = await cluster.createDatabase();
    const db = await openDatabase({ kind: 'postgres', url });
    later(() => db.close());
    await create(db.knex);
    return { url, db };
  }
  async function sidecar(opts: Parameters<typeof startTestSidecar>[0]): Promise<TestSidecar> {
    const s = await startTestSidecar(opts);
    later(() => s.stop());
    return s;
  }
  const purgeRows = async (db: Database) =>
    (await db.knex('lethe_purges').select('request_id', 'subject_id', 'rows_affected')) as Array<{
      request_id: string;
      subject_id: string;
      rows_affected: unknown;
    }>;
  const consumerInfo = (b: Bus, service: string) => b.jsm.consumers.info(STREAM, service);
  return {
    /** The file's PostgreSQL cluster (set once its beforeAll ran). */
    get cluster(): PostgresCluster {
      return cluster;
    },
    later,
    bus,
    database,
    sidecar,
    purgeRows,
    consumerInfo,
  };
}
