import pg from 'pg';
import { expect, it } from 'vitest';
import {
  ANALYTICS_SERVICE,
  ORDERS_SERVICE,
  createAnalyticsSchema,
  createOrdersSchema,
  expectedAnalyticsRowsAffected,
  expectedOrdersRowsAffected,
  seedAnalytics,
  seedOrders,
  shippingAddressCount,
} from '../fixtures/downstream/index.js';
import { eventually, describeSidecar } from '../support/sidecar-harness.js';

/**
 * `lethe sidecar` against a real PostgreSQL and a real nats-server (set-up:
 * test/support/sidecar-harness.ts): bounded concurrency, a draining stop(), and the health
 * endpoints while NATS goes away and comes back.
 */
describeSidecar('concurrency, drain and health', ({ later, bus, database, sidecar, purgeRows, consumerInfo }) => {
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
});
