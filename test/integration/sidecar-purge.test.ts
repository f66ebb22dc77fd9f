import { AckPolicy } from '@nats-io/jetstream';
import { expect, it } from 'vitest';
import { ANONYMIZED_SUBJECT, receiptSubject } from '../../src/events/subjects.js';
import {
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
import { eventually, hmacHex, describeSidecar, spawnLethe, storedReceipts } from '../support/sidecar-harness.js';

/**
 * `lethe sidecar` against a real PostgreSQL and a real nats-server (set-up:
 * test/support/sidecar-harness.ts): what one event does. Each service's sidecar purges its own
 * database exactly as its data map says and publishes one receipt; a redelivered event is not
 * purged twice.
 */
describeSidecar('purges and receipts', ({ later, bus, database, sidecar, purgeRows, consumerInfo }) => {
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
});
