import { type ChildProcess, spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { AckPolicy, type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { type PurgedEvent, anonymizedEventFor, parsePurgedEvent } from '../../src/events/cloudevents.js';
import { ensureStream } from '../../src/events/nats.js';
import { ANONYMIZED_SUBJECT, RECEIPTS_FILTER, receiptSubject } from '../../src/events/subjects.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import {
  ANALYTICS_DATA_MAP,
  ANALYTICS_SERVICE,
  FIXTURE_HASH_KEY,
  ORDERS_DATA_MAP,
  ORDERS_SERVICE,
  type OrderRow,
  createAnalyticsSchema,
  createOrdersSchema,
  expectedAnalyticsRowsAffected,
  expectedOrdersRowsAffected,
  ordersOf,
  pageViewsOf,
  searchCount,
  seedAnalytics,
  seedOrders,
  shippingAddressCount,
} from '../fixtures/downstream/index.js';
import { type TestSidecar, startTestSidecar } from '../fixtures/downstream/sidecar.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';

/**
 * `lethe sidecar` against a real PostgreSQL and a real nats-server (Debian's 2.9.10 here).
 * Each test gets a fresh privacy stream (so each durable consumer sees only that test's
 * events) and its own databases; the health test, which stops NATS, its own nats-server.
 */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();
const STREAM = 'LETHE_PRIVACY';

/** Polls `probe` until it returns a value other than undefined; fails after `timeoutMs`. */
async function eventually<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

const hmacHex = (value: string) => createHmac('sha256', Buffer.from(FIXTURE_HASH_KEY, 'hex')).update(value, 'utf8').digest('hex');

/** A test's view of NATS: a client, a receipt collector, and a way to publish events. */
interface Bus {
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
async function storedReceipts(b: Bus): Promise<PurgedEvent[]> {
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
function spawnLethe(
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

describe.runIf(pgBin !== undefined && natsBin !== undefined)('lethe sidecar (PostgreSQL + NATS)', () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  const cleanups: Array<() => Promise<unknown>> = [];
  const later = (fn: () => Promise<unknown>) => cleanups.push(fn);

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
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
      const own = await startNatsServer(natsBin ?? '');
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

  it('two services, each with its own database: one event purges both exactly as their data maps say, one receipt each', async () => {
    const b = await bus();
    const orders = await database(createOrdersSchema);
    const analytics = await database(createAnalyticsSchema);
    const user = 'u-5d1c0e7a';
    const bystander = 'u-bystander';
    const ordersSeed = await seedOrders(orders.db.knex, user);
    await seedOrders(orders.db.knex, bystander);
    const analyticsSeed = await seedAnalytics(analytics.db.knex, user);
    await seedAnalytics(analytics.db.knex, bystander);
    const before: OrderRow[] = await ordersOf(orders.db.knex, user);
    const bystanderOrders = await ordersOf(orders.db.knex, bystander);
    const bystanderViews = await pageViewsOf(analytics.db.knex, bystander);

    const ordersSidecar = await sidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url });
    const analyticsSidecar = await sidecar({ service: ANALYTICS_SERVICE, databaseUrl: analytics.url, natsUrl: b.server.url });
    const startedAt = Date.now();
    const requestId = await b.publishAnonymized(user);

    await eventually('a receipt from each service', () => (b.receiptsFor(requestId).length >= 2 ? true : undefined));
    const finishedAt = Date.now();
    const [ordersReceipt, ...moreOrders] = b.receiptsFor(requestId, ORDERS_SERVICE);
    const [analyticsReceipt, ...moreAnalytics] = b.receiptsFor(requestId, ANALYTICS_SERVICE);
    expect(moreOrders).toEqual([]);
    expect(moreAnalytics).toEqual([]);
    expect(b.receipts.map((r) => r.subject).sort()).toEqual([receiptSubject(ANALYTICS_SERVICE), receiptSubject(ORDERS_SERVICE)]);
    expect(ordersReceipt?.data).toEqual({
      user_id: user,
      request_id: requestId,
      service: 'orders',
      status: 'purged',
      purged_at: expect.any(String) as string,
      rows_affected: expectedOrdersRowsAffected(ordersSeed),
    });
    expect(ordersReceipt?.data.rows_affected).toEqual([
      { table: 'shipping_addresses', action: 'delete', rows: 3 },
      { table: 'orders', action: 'update', rows: 2 },
    ]);
    expect(analyticsReceipt?.data).toEqual({
      user_id: user,
      request_id: requestId,
      service: 'analytics',
      status: 'purged',
      purged_at: expect.any(String) as string,
      rows_affected: expectedAnalyticsRowsAffected(analyticsSeed),
    });
    expect(ordersReceipt?.subject).toBe(user);
    expect(ordersReceipt?.source).toBe('/lethe/sidecar/orders');
    const purgedAt = Date.parse(ordersReceipt?.data.purged_at ?? '');
    expect(purgedAt).toBeGreaterThanOrEqual(startedAt - 1000);
    expect(purgedAt).toBeLessThanOrEqual(finishedAt + 1000);

    // orders: addresses gone, email templated, name hashed with the key, phone nulled, totals kept.
    const after = await ordersOf(orders.db.knex, user);
    expect(after.map((o) => o.total_cents)).toEqual(before.map((o) => o.total_cents));
    expect(after.map((o) => o.id)).toEqual(before.map((o) => o.id));
    for (const o of after) {
      const stamp = Number(/^anonymized-(\d+)@deleted\.local$/.exec(o.email)?.[1]);
      expect(stamp).toBeGreaterThanOrEqual(startedAt - 1000);
      expect(stamp).toBeLessThanOrEqual(finishedAt + 1000);
      expect(o.customer_name).toBe(hmacHex(`Customer ${user}`));
      expect(o.phone).toBeNull();
    }
    expect(await shippingAddressCount(orders.db.knex, user)).toBe(0);
    // analytics: page views kept without address and browser; searches gone.
    expect(await pageViewsOf(analytics.db.knex, user)).toEqual([
      { url: '/', ip_address: '0.0.0.0', user_agent: 'anonymized' },
      { url: '/pricing', ip_address: '0.0.0.0', user_agent: 'anonymized' },
      { url: '/checkout', ip_address: '0.0.0.0', user_agent: 'anonymized' },
      { url: '/account', ip_address: '0.0.0.0', user_agent: 'anonymized' },
    ]);
    expect(await searchCount(analytics.db.knex, user)).toBe(0);
    // Nobody else was touched.
    expect(await ordersOf(orders.db.knex, bystander)).toEqual(bystanderOrders);
    expect(await shippingAddressCount(orders.db.knex, bystander)).toBe(3);
    expect(await pageViewsOf(analytics.db.knex, bystander)).toEqual(bystanderViews);
    expect(await searchCount(analytics.db.knex, bystander)).toBe(2);

    // Each database records the request once; each durable consumer acked its event.
    expect((await purgeRows(orders.db)).map((r) => [r.request_id, r.subject_id])).toEqual([[requestId, user]]);
    expect((await purgeRows(analytics.db)).map((r) => [r.request_id, r.subject_id])).toEqual([[requestId, user]]);
    for (const service of [ORDERS_SERVICE, ANALYTICS_SERVICE]) {
      const info = await eventually(`${service} to ack`, async () => {
        const i = await consumerInfo(b, service);
        return i.num_ack_pending === 0 ? i : undefined;
      });
      expect(info).toMatchObject({ name: service, num_pending: 0, num_redelivered: 0, delivered: { consumer_seq: 1 } });
      expect(info.config).toMatchObject({ durable_name: service, filter_subject: ANONYMIZED_SUBJECT, ack_policy: AckPolicy.Explicit, max_deliver: -1 });
    }
    // No personal data in the logs: request ids and counts only.
    for (const s of [ordersSidecar, analyticsSidecar]) {
      const text = s.logText();
      expect(text).toContain(requestId);
      for (const pii of [user, `${user}@example.com`, `Customer ${user}`, '203.0.113.7', 'birthday gift']) expect(text).not.toContain(pii);
    }
  });

  it('a redelivered event is not purged twice: a sidecar killed between receipt and ack, then a new one', async () => {
    const b = await bus();
    const orders = await database(createOrdersSchema);
    const user = 'u-crash-9b21';
    const seed = await seedOrders(orders.db.knex, user);
    const requestId = await b.publishAnonymized(user);

    // The real command, with the failpoint armed: it purges, publishes the receipt, and dies before acking.
    const cmd = spawnLethe(['sidecar', '--service', ORDERS_SERVICE, '--data-map', ORDERS_DATA_MAP, '--health-listen', '127.0.0.1:0'], {
      DATABASE_URL: orders.url,
      LETHE_NATS_URL: b.server.url,
      LETHE_HASH_KEY: FIXTURE_HASH_KEY,
      LETHE_SIDECAR_ACK_WAIT: '2',
      LETHE_FAILPOINTS: 'sidecar-before-ack',
    });
    later(async () => {
      if (cmd.child.exitCode === null && cmd.child.signalCode === null) cmd.child.kill('SIGKILL');
    });
    // (A process killed like this may lose its last log lines: the facts below come from NATS and the database.)
    expect(await cmd.exited(), cmd.output()).toEqual({ code: null, signal: 'SIGKILL' });

    // It died after the receipt and before the ack: purged once, one receipt, the event still unacked.
    const [first] = b.receiptsFor(requestId);
    expect(b.receiptsFor(requestId)).toHaveLength(1);
    expect(first?.data).toMatchObject({ status: 'purged', service: 'orders', rows_affected: expectedOrdersRowsAffected(seed) });
    const afterFirst = await ordersOf(orders.db.knex, user);
    expect(afterFirst.every((o) => /^anonymized-\d+@deleted\.local$/.test(o.email) && o.customer_name === hmacHex(`Customer ${user}`))).toBe(true);
    expect((await consumerInfo(b, ORDERS_SERVICE)).num_ack_pending).toBe(1);

    // A normal sidecar gets the event again once the ack wait (2 s) has passed.
    const s = await sidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url, env: { LETHE_SIDECAR_ACK_WAIT: '2' } });
    await eventually('the receipt of the redelivered event', () => (b.receiptsFor(requestId).length >= 2 ? true : undefined), 30_000);
    const info = await eventually('the redelivered event to be acked', async () => {
      const i = await consumerInfo(b, ORDERS_SERVICE);
      return i.num_ack_pending === 0 ? i : undefined;
    });
    expect(info).toMatchObject({ num_pending: 0, num_redelivered: 0, delivered: { consumer_seq: 2 } });

    // The receipt was published again, with the same rows as the first time…
    const receipts = b.receiptsFor(requestId);
    expect(receipts).toHaveLength(2);
    expect(receipts[1]?.data).toMatchObject({ status: 'purged', user_id: user, request_id: requestId, service: 'orders' });
    expect(receipts[1]?.data.rows_affected).toEqual(first?.data.rows_affected);
    const replay = s.logs.find((l) => l.msg === 'already purged: receipt published again');
    expect(replay).toMatchObject({ requestId, deliveries: 2, replayed: true, duplicateReceipt: true });
    // …and nothing was applied twice: the templated email and the hash are the first run's.
    expect(await ordersOf(orders.db.knex, user)).toEqual(afterFirst);
    expect(await purgeRows(orders.db)).toHaveLength(1);

    // The stream kept one copy (same Nats-Msg-Id within the duplicate window): a ledger-side
    // consumer of receipts sees exactly one `purged` receipt for the request.
    expect((await storedReceipts(b)).map((e) => [e.data.request_id, e.data.status, e.data.service])).toEqual([[requestId, 'purged', 'orders']]);
  });

  it('an event the database refuses ends as a failed receipt after exactly LETHE_SIDECAR_MAX_DELIVERIES deliveries, data unchanged', async () => {
    const b = await bus();
    const held = 'u-legal-hold';
    const orders = await database(async (knex) => {
      await createOrdersSchema(knex);
      // A legal hold: updating this user's orders is refused. Each refusal bumps a sequence
      // (sequences are not rolled back), so the test can count the attempts the database saw.
      await knex.raw('CREATE SEQUENCE purge_refusals');
      await knex.raw(`
        CREATE FUNCTION refuse_purge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM nextval('purge_refusals');
          RAISE EXCEPTION 'legal hold on order % of %', OLD.id, OLD.email;
        END $$`);
      await knex.raw(`CREATE TRIGGER legal_hold BEFORE UPDATE ON orders FOR EACH ROW WHEN (OLD.user_id = '${held}') EXECUTE FUNCTION refuse_purge()`);
    });
    await seedOrders(orders.db.knex, held);
    const before = await ordersOf(orders.db.knex, held);
    const attempts = async () => {
      const r = (await orders.db.knex.raw('SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM purge_refusals')) as {
        rows: Array<{ n: number | string }>;
      };
      return Number(r.rows[0]?.n);
    };

    const s = await sidecar({
      service: ORDERS_SERVICE,
      databaseUrl: orders.url,
      natsUrl: b.server.url,
      env: { LETHE_SIDECAR_MAX_DELIVERIES: '3', LETHE_SIDECAR_RETRY_BASE_MS: '100' },
    });
    const requestId = await b.publishAnonymized(held);
    const [failed] = await eventually('the failure receipt', () => {
      const r = b.receiptsFor(requestId);
      return r.length > 0 ? r : undefined;
    });
    expect(failed?.data).toEqual({
      user_id: held,
      request_id: requestId,
      service: 'orders',
      status: 'failed',
      purged_at: expect.any(String) as string,
      rows_affected: [],
      error: 'purge failed after 3 deliveries: SQLSTATE P0001',
    });
    expect(await attempts()).toBe(3);

    // Terminated: no fourth delivery, even well after the next backoff (400 ms) would have passed.
    await new Promise((r) => setTimeout(r, 2_000));
    expect(await attempts()).toBe(3);
    expect(b.receiptsFor(requestId)).toHaveLength(1);
    const info = await consumerInfo(b, ORDERS_SERVICE);
    expect(info).toMatchObject({ num_ack_pending: 0, num_pending: 0, num_redelivered: 0, delivered: { consumer_seq: 3 } });

    // The retries were spaced by the backoff (100 ms, then 200 ms) and logged without the error message.
    const tries = s.logs.filter(
      (l) => l.requestId === requestId && (l.msg === 'purge failed: will retry' || String(l.msg).startsWith('purge failed on the last allowed delivery')),
    );
    expect(tries.map((l) => [l.deliveries, l.err, l.retryInMs])).toEqual([
      [1, 'SQLSTATE P0001', 100],
      [2, 'SQLSTATE P0001', 200],
      [3, 'SQLSTATE P0001', undefined],
    ]);
    const times = tries.map((l) => Number(l.time));
    expect((times[1] ?? 0) - (times[0] ?? 0)).toBeGreaterThanOrEqual(100 - 5);
    expect((times[2] ?? 0) - (times[1] ?? 0)).toBeGreaterThanOrEqual(200 - 5);
    for (const pii of [`${held}@example.com`, 'legal hold on order']) {
      expect(s.logText()).not.toContain(pii);
      expect(JSON.stringify(failed)).not.toContain(pii);
    }

    // One transaction: the addresses deleted before the refused update came back.
    expect(await ordersOf(orders.db.knex, held)).toEqual(before);
    expect(await shippingAddressCount(orders.db.knex, held)).toBe(3);
    expect(await purgeRows(orders.db)).toEqual([]);
  });

  it('runs at most LETHE_SIDECAR_CONCURRENCY purges at once, and stop() drains: what it received is finished and acked', async () => {
    const b = await bus();
    const orders = await database(createOrdersSchema);
    const users = Array.from({ length: 10 }, (_, i) => `u-batch-${i}`);
    for (const u of users) await seedOrders(orders.db.knex, u);
    const s = await sidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url, env: { LETHE_SIDECAR_CONCURRENCY: '2' } });
    const dbName = new URL(orders.url).pathname.slice(1);

    // The test holds a lock every purge needs (the first thing a purge changes is shipping_addresses).
    const holder = new pg.Client({ connectionString: orders.url, application_name: 'sidecar-test-lock' });
    await holder.connect();
    later(() => holder.end());
    await holder.query('BEGIN');
    await holder.query('LOCK TABLE shipping_addresses IN ACCESS EXCLUSIVE MODE');
    const watcher = new pg.Client({ connectionString: orders.url, application_name: 'sidecar-test-watch' });
    await watcher.connect();
    later(() => watcher.end());
    const blockedPurges = async () => {
      const r = await watcher.query<{ n: string }>(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = 'lethe' AND wait_event_type = 'Lock'",
        [dbName],
      );
      return Number(r.rows[0]?.n);
    };

    const requests = new Map<string, string>();
    for (const u of users) requests.set(await b.publishAnonymized(u), u);

    // Watch for 3 s: two purges wait on the lock, never a third.
    await eventually('two purges waiting on the lock', async () => ((await blockedPurges()) >= 2 ? true : undefined));
    const samples: number[] = [];
    const until = Date.now() + 3_000;
    while (Date.now() < until) {
      samples.push(await blockedPurges());
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(samples.length).toBeGreaterThan(20);
    expect(Math.max(...samples)).toBe(2);
    expect(samples.at(-1)).toBe(2);
    expect(b.receipts).toHaveLength(0);

    // Stop while two purges are stuck: not ready at once, done only when they have finished.
    expect((await fetch(`${s.healthUrl}/readyz`)).status).toBe(200);
    let stopped = false;
    const stopping = s.stop().then(() => {
      stopped = true;
    });
    await new Promise((r) => setTimeout(r, 500));
    expect(stopped).toBe(false);
    expect((await fetch(`${s.healthUrl}/readyz`)).status).toBe(503);
    expect((await fetch(`${s.healthUrl}/healthz`)).status).toBe(200);
    await holder.query('COMMIT');
    await stopping;

    // Every event it had received was purged, receipted and acked; the rest wait in the stream.
    const done = b.receipts.map((r) => r.event.data);
    expect(done.length).toBeGreaterThanOrEqual(2);
    expect(done.length).toBeLessThanOrEqual(4); // the purges in flight plus at most `concurrency` pulled ahead
    for (const r of done)
      expect(r).toMatchObject({
        status: 'purged',
        user_id: requests.get(r.request_id),
        rows_affected: expectedOrdersRowsAffected({ orderIds: [], orders: 2, shippingAddresses: 3 }),
      });
    expect((await purgeRows(orders.db)).map((r) => r.request_id).sort()).toEqual(done.map((r) => r.request_id).sort());
    const info = await consumerInfo(b, ORDERS_SERVICE);
    expect(info).toMatchObject({ num_ack_pending: 0, num_redelivered: 0, num_pending: 10 - done.length });

    // A new sidecar takes the rest: ten receipts in all, one per request, each purge applied once.
    await sidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url, env: { LETHE_SIDECAR_CONCURRENCY: '2' } });
    await eventually('all ten receipts', () => (b.receipts.length >= 10 ? true : undefined));
    expect(new Set(b.receipts.map((r) => r.event.data.request_id))).toEqual(new Set(requests.keys()));
    expect(b.receipts).toHaveLength(10);
    expect(await purgeRows(orders.db)).toHaveLength(10);
    for (const u of users) expect(await shippingAddressCount(orders.db.knex, u)).toBe(0);
  });

  it('health: /healthz while the process runs; /readyz only while NATS is connected and the consumer runs', async () => {
    const b = await bus({ ownServer: true });
    const analytics = await database(createAnalyticsSchema);
    const s = await sidecar({ service: ANALYTICS_SERVICE, databaseUrl: analytics.url, natsUrl: b.server.url });
    const get = async (path: string, init?: RequestInit) => {
      const r = await fetch(`${s.healthUrl}${path}`, init);
      return { status: r.status, body: await r.text() };
    };
    expect(await get('/healthz')).toEqual({ status: 200, body: 'ok\n' });
    // Ready once the consumer's first pull is open, which start() does not wait for (a loaded CI machine sees the gap).
    await eventually('/readyz to answer 200', async () => ((await get('/readyz')).status === 200 ? true : undefined), 20_000, 50);
    expect(await get('/readyz')).toEqual({ status: 200, body: 'ready\n' });
    expect((await get('/metrics')).status).toBe(200);
    expect((await get('/nope')).status).toBe(404);
    expect((await get('/readyz', { method: 'POST' })).status).toBe(405);

    await b.server.stop();
    await eventually('/readyz to answer 503 with NATS down', async () => ((await get('/readyz')).status === 503 ? true : undefined), 20_000, 100);
    expect(await get('/readyz')).toEqual({ status: 503, body: 'not ready\n' });
    expect(await get('/healthz')).toEqual({ status: 200, body: 'ok\n' });

    await b.server.start();
    await eventually('/readyz to answer 200 once NATS is back', async () => ((await get('/readyz')).status === 200 ? true : undefined), 30_000, 100);
    // And it does consume again after the restart.
    const user = 'u-after-restart';
    await seedAnalytics(analytics.db.knex, user);
    const requestId = await eventually(
      'the test client to publish again',
      async () => {
        try {
          return await b.publishAnonymized(user);
        } catch {
          return undefined;
        }
      },
      30_000,
      250,
    );
    const [receipt] = await eventually('a receipt after the restart', () => {
      const r = b.receiptsFor(requestId);
      return r.length > 0 ? r : undefined;
    });
    expect(receipt?.data).toMatchObject({
      status: 'purged',
      service: 'analytics',
      rows_affected: expectedAnalyticsRowsAffected({ pageViews: 4, searches: 2 }),
    });

    await s.stop();
    await expect(fetch(`${s.healthUrl}/healthz`)).rejects.toThrow();
  });

  it('a message that is not an anonymization event is terminated at once, logged without its payload', async () => {
    const b = await bus();
    const analytics = await database(createAnalyticsSchema);
    const user = 'u-after-junk';
    await seedAnalytics(analytics.db.knex, user);
    // A one-second ack wait: a junk message that was not terminated would come back within the test.
    const s = await sidecar({ service: ANALYTICS_SERVICE, databaseUrl: analytics.url, natsUrl: b.server.url, env: { LETHE_SIDECAR_ACK_WAIT: '1' } });
    await b.js.publish(ANONYMIZED_SUBJECT, JSON.stringify({ specversion: '1.0', type: 'something.else', data: { email: 'jane.doe@example.com' } }), {
      msgID: 'junk-1',
    });
    const requestId = await b.publishAnonymized(user);
    await eventually('the receipt of the valid event', () => (b.receiptsFor(requestId).length > 0 ? true : undefined));
    await new Promise((r) => setTimeout(r, 2_500));
    expect(b.receipts).toHaveLength(1);
    expect(s.logs.filter((l) => l.msg === 'not a valid anonymization event: terminated')).toEqual([expect.objectContaining({ seq: 1, deliveries: 1 })]);
    expect(s.logText()).not.toContain('jane.doe');
    expect(await consumerInfo(b, ANALYTICS_SERVICE)).toMatchObject({ num_ack_pending: 0, num_pending: 0, num_redelivered: 0, delivered: { consumer_seq: 2 } });
  });

  it('a purge whose receipt the stream will not store is retried past the delivery limit, never reported failed, until the receipt is stored', async () => {
    // A stream that takes events but not receipts (as if misconfigured), and no core subscriber:
    // publishing a receipt fails at once.
    const b = await bus({ streamSubjects: [ANONYMIZED_SUBJECT], listen: false });
    const orders = await database(createOrdersSchema);
    const user = 'u-no-receipt';
    const seed = await seedOrders(orders.db.knex, user);
    const s = await sidecar({
      service: ORDERS_SERVICE,
      databaseUrl: orders.url,
      natsUrl: b.server.url,
      env: { LETHE_SIDECAR_MAX_DELIVERIES: '2', LETHE_SIDECAR_RETRY_BASE_MS: '100' },
    });
    const requestId = await b.publishAnonymized(user);
    const notPublished = () => s.logs.filter((l) => l.requestId === requestId && l.msg === 'purged, but the receipt was not published: will retry');
    await eventually('three failed receipt publications', () => (notPublished().length >= 3 ? true : undefined));
    // Warned, then errors once the limit is passed; still retried with backoff.
    expect(
      notPublished()
        .slice(0, 3)
        .map((l) => [l.deliveries, l.retryInMs, l.level]),
    ).toEqual([
      [1, 100, 40],
      [2, 200, 50],
      [3, 400, 50],
    ]);
    const purged = await ordersOf(orders.db.knex, user);
    expect(purged.every((o) => o.phone === null && o.email.startsWith('anonymized-'))).toBe(true);

    await b.jsm.streams.update(STREAM, { subjects: ['privacy.v1.>'] });
    await eventually('the event to be acked', async () => ((await consumerInfo(b, ORDERS_SERVICE)).num_ack_pending === 0 ? true : undefined));
    const stored = await storedReceipts(b);
    expect(stored.map((e) => e.data)).toEqual([
      {
        user_id: user,
        request_id: requestId,
        service: 'orders',
        status: 'purged',
        purged_at: expect.any(String) as string,
        rows_affected: expectedOrdersRowsAffected(seed),
      },
    ]);
    expect(s.logs.some((l) => String(l.msg).startsWith('purge failed'))).toBe(false);
    expect(await ordersOf(orders.db.knex, user)).toEqual(purged);
    expect(await purgeRows(orders.db)).toHaveLength(1);
  });

  it('the command: logs where it works without credentials, drains on SIGTERM and exits 0; a bad setting is one line and exit code 2', async () => {
    const b = await bus();
    const analytics = await database(createAnalyticsSchema);
    const user = 'u-cli';
    await seedAnalytics(analytics.db.knex, user);
    // The test cluster trusts every connection, so a password in the URL is accepted and ignored.
    const url = new URL(analytics.url);
    url.password = 'hunter2';
    const cmd = spawnLethe(['sidecar', '--service', ANALYTICS_SERVICE, '--data-map', ANALYTICS_DATA_MAP, '--health-listen', '127.0.0.1:0'], {
      DATABASE_URL: url.toString(),
      LETHE_NATS_URL: b.server.url,
    });
    later(async () => {
      if (cmd.child.exitCode === null && cmd.child.signalCode === null) cmd.child.kill('SIGKILL');
    });
    const running = await eventually(
      'the command to run',
      () => {
        if (cmd.child.exitCode !== null) throw new Error(`lethe sidecar exited: ${cmd.output()}`);
        return cmd.lines().find((l) => l.msg === 'lethe sidecar running');
      },
      60_000,
    );
    expect(running).toMatchObject({
      service: 'lethe-sidecar',
      downstream: 'analytics',
      database: `postgresql://127.0.0.1:${cluster.port}${url.pathname}`,
      dataMap: ANALYTICS_DATA_MAP,
      nats: b.server.url,
      stream: STREAM,
      consumer: 'analytics',
      concurrency: 4,
      maxDeliveries: 5,
    });
    expect((await fetch(`http://${String(running.health)}/readyz`)).status).toBe(200);

    const requestId = await b.publishAnonymized(user);
    await eventually('the receipt', () => (b.receiptsFor(requestId).length > 0 ? true : undefined));
    const signalledAt = Date.now();
    cmd.child.kill('SIGTERM');
    expect(await cmd.exited(30_000), cmd.output()).toEqual({ code: 0, signal: null });
    // Nothing was in flight: the drain is quick, and nothing (a timer, a socket) holds the process up.
    expect(Date.now() - signalledAt).toBeLessThan(5_000);
    expect(cmd.lines().map((l) => l.msg)).toEqual(expect.arrayContaining(['shutting down', 'sidecar stopped']));
    expect(cmd.output()).not.toContain('hunter2');
    expect(cmd.output()).not.toContain(user);
    expect(await consumerInfo(b, ANALYTICS_SERVICE)).toMatchObject({ num_ack_pending: 0, num_pending: 0 });

    const bad = spawnLethe(['sidecar', '--service', ANALYTICS_SERVICE, '--data-map', ANALYTICS_DATA_MAP], {
      DATABASE_URL: url.toString(),
      LETHE_NATS_URL: b.server.url,
      LETHE_SIDECAR_CONCURRENCY: '0',
    });
    expect(await bad.exited()).toEqual({ code: 2, signal: null });
    expect(bad.output()).toBe('lethe: configuration: LETHE_SIDECAR_CONCURRENCY: must be a whole number from 1 to 64\n');
  });

  it('start-up: refuses a data map that does not match the database, a hash without a key, and a foreign consumer; updates its own', async () => {
    const b = await bus();
    const analytics = await database(createAnalyticsSchema);
    const orders = await database(createOrdersSchema);
    const empty = await database(async () => undefined);
    await expect(startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: empty.url, natsUrl: b.server.url })).rejects.toThrow(
      new ConfigError(
        "categories.shipping_addresses.subject.via.column: table 'shipping_addresses' does not exist in the database (run the migrations, or fix the data map)",
        ORDERS_DATA_MAP,
      ),
    );
    await expect(
      startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url, env: { LETHE_HASH_KEY: undefined } }),
    ).rejects.toThrow(new ConfigError(`required: the data map ${ORDERS_DATA_MAP} uses the hash action (openssl rand -hex 32)`, 'LETHE_HASH_KEY'));

    // A consumer named after the service that is something else is never taken over.
    await b.jsm.consumers.add(STREAM, { durable_name: ORDERS_SERVICE, filter_subject: RECEIPTS_FILTER, ack_policy: AckPolicy.Explicit });
    await expect(startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url })).rejects.toThrow(
      new ConfigError(
        `consumer 'orders' on stream '${STREAM}' exists but is not a lethe sidecar consumer (a pull consumer of ${ANONYMIZED_SUBJECT} with explicit acks): choose another service name, or remove that consumer`,
        '--service',
      ),
    );
    expect((await consumerInfo(b, ORDERS_SERVICE)).config.filter_subject).toBe(RECEIPTS_FILTER);

    // Its own consumer, made with other settings (an older deployment), is brought in line.
    await b.jsm.consumers.add(STREAM, {
      durable_name: ANALYTICS_SERVICE,
      filter_subject: ANONYMIZED_SUBJECT,
      ack_policy: AckPolicy.Explicit,
      ack_wait: 30_000_000_000,
      max_deliver: 10,
    });
    await sidecar({ service: ANALYTICS_SERVICE, databaseUrl: analytics.url, natsUrl: b.server.url, env: { LETHE_SIDECAR_ACK_WAIT: '2' } });
    expect((await consumerInfo(b, ANALYTICS_SERVICE)).config).toMatchObject({ ack_wait: 2_000_000_000, max_deliver: -1, filter_subject: ANONYMIZED_SUBJECT });
  });
});
