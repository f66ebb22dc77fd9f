import { expect, it } from 'vitest';
import { ANONYMIZED_SUBJECT } from '../../src/events/subjects.js';
import {
  ANALYTICS_SERVICE,
  ORDERS_SERVICE,
  createAnalyticsSchema,
  createOrdersSchema,
  expectedOrdersRowsAffected,
  ordersOf,
  seedAnalytics,
  seedOrders,
  shippingAddressCount,
} from '../fixtures/downstream/index.js';
import { STREAM, eventually, describeSidecar, storedReceipts } from '../support/sidecar-harness.js';

/**
 * `lethe sidecar` against a real PostgreSQL and a real nats-server (set-up:
 * test/support/sidecar-harness.ts): what goes wrong. An event the database refuses ends as a
 * failed receipt after the delivery limit; a message that is not an event is terminated at once;
 * a receipt the stream will not store is retried until it is.
 */
describeSidecar('failures', ({ bus, database, sidecar, purgeRows, consumerInfo }) => {
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
});
