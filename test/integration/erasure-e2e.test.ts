import { randomUUID } from 'node:crypto';
import type { NatsConnection } from '@nats-io/nats-core';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfirmationState, RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import {
  ANALYTICS_SERVICE,
  ORDERS_SERVICE,
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
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { natsClient, storedMessages, waitFor } from '../support/streams.js';

/**
 * The whole loop: ForgetUser on the PrivacyService → event on NATS → two downstream sidecars,
 * each on its own database with its own data map, purge and send receipts → the ledger shows
 * both confirmations and completes the request.
 */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();
const REASON = 'GDPR Right to be Forgotten';

describe.runIf(pgBin !== undefined && natsBin !== undefined)('erasure across downstream services', () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let identityUrl: string;
  let orders: Database;
  let analytics: Database;
  let server: TestServer;
  let sidecars: TestSidecar[] = [];
  let nc: NatsConnection;
  const bulk = Array.from({ length: 100 }, (_, i) => `bulk-${String(i + 1).padStart(3, '0')}`);

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
    identityUrl = await cluster.createDatabase();
    const ordersUrl = await cluster.createDatabase();
    const analyticsUrl = await cluster.createDatabase();
    orders = await openDatabase({ kind: 'postgres', url: ordersUrl });
    analytics = await openDatabase({ kind: 'postgres', url: analyticsUrl });
    await createOrdersSchema(orders.knex);
    await createAnalyticsSchema(analytics.knex);
    server = await startTestServer({
      DATABASE_URL: identityUrl,
      LETHE_NATS_URL: nats.url,
      LETHE_DOWNSTREAM_SERVICES: `${ORDERS_SERVICE},${ANALYTICS_SERVICE}`,
    });
    sidecars = [
      await startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: ordersUrl, natsUrl: nats.url }),
      await startTestSidecar({ service: ANALYTICS_SERVICE, databaseUrl: analyticsUrl, natsUrl: nats.url }),
    ];
    nc = await natsClient(nats.url);
    const c = new pg.Client({ connectionString: identityUrl });
    await c.connect();
    await c.query(`INSERT INTO users (id, email) SELECT unnest($1::text[]), unnest($1::text[]) || '@example.com'`, [bulk]);
    await c.end();
  });

  afterAll(async () => {
    await nc?.close();
    for (const s of sidecars) await s.stop();
    await server?.stop();
    await orders?.close();
    await analytics?.close();
    await nats?.destroy();
    await cluster?.destroy();
  });

  it('purges both downstream databases as their data maps say, and completes the request on both confirmations', async () => {
    const ordersSeed = await seedOrders(orders.knex, 'user-id-123');
    const analyticsSeed = await seedAnalytics(analytics.knex, 'user-id-123');
    const untouchedOrders = await seedOrders(orders.knex, 'member-user-id-456');

    const client = await server.clientAs('owner-user-id-2');
    const r = await client.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: randomUUID() });
    expect(r.success).toBe(true);

    const request = await waitFor('the request completed', async () => {
      const { request: q } = await client.getPrivacyRequest({ id: r.requestId });
      return q?.state === RequestState.REQUEST_STATE_COMPLETED ? q : undefined;
    });
    expect(request.confirmations.map((c) => ({ service: c.service, state: c.state, rowsAffected: c.rowsAffected }))).toEqual([
      { service: ANALYTICS_SERVICE, state: ConfirmationState.CONFIRMATION_STATE_PURGED, rowsAffected: expectedAnalyticsRowsAffected(analyticsSeed) },
      { service: ORDERS_SERVICE, state: ConfirmationState.CONFIRMATION_STATE_PURGED, rowsAffected: expectedOrdersRowsAffected(ordersSeed) },
    ]);

    // The orders service: addresses deleted, orders pseudonymized, amounts kept.
    expect(await shippingAddressCount(orders.knex, 'user-id-123')).toBe(0);
    const purged = await ordersOf(orders.knex, 'user-id-123');
    expect(purged).toHaveLength(2);
    for (const o of purged) {
      expect(o.email).toMatch(/^anonymized-\d+@deleted\.local$/);
      expect(o.customer_name).toMatch(/^[0-9a-f]{64}$/);
      expect(o.phone).toBeNull();
    }
    expect(purged.map((o) => o.total_cents)).toEqual([4_990, 12_500]);
    // The analytics service: page views kept without address and browser, searches gone.
    expect(await pageViewsOf(analytics.knex, 'user-id-123')).toEqual(
      ['/', '/pricing', '/checkout', '/account'].map((url) => ({ url, ip_address: '0.0.0.0', user_agent: 'anonymized' })),
    );
    expect(await searchCount(analytics.knex, 'user-id-123')).toBe(0);
    // Someone else's data is untouched.
    expect(await shippingAddressCount(orders.knex, 'member-user-id-456')).toBe(untouchedOrders.shippingAddresses);
    expect((await ordersOf(orders.knex, 'member-user-id-456')).every((o) => o.email === 'member-user-id-456@example.com')).toBe(true);
  });

  it('loses nothing while NATS is away: 100 users forgotten, then every event exactly once and every request completed', async () => {
    for (const u of bulk) await seedAnalytics(analytics.knex, u);
    const client = await server.clientAs('platform-owner-id');
    await nats.stop();
    const requests: string[] = [];
    for (const u of bulk) requests.push((await client.forgetUser({ userId: u, reason: REASON, idempotencyKey: `e2e-${u}` })).requestId);
    await nats.start();

    const ids = new Set(requests);
    await waitFor(
      'all 100 requests completed',
      async () => {
        const list = await client.listPrivacyRequests({
          subjectId: '',
          state: RequestState.REQUEST_STATE_COMPLETED,
          overdueOnly: false,
          pageSize: 500,
          pageToken: '',
        });
        return list.requests.filter((q) => ids.has(q.id)).length === 100;
      },
      90_000,
    );
    const events = (await storedMessages(nc, 'LETHE_PRIVACY', 'privacy.v1.user.anonymized')).filter((m) =>
      ids.has((m.json.data as { request_id: string }).request_id),
    );
    expect(events).toHaveLength(100);
    expect(new Set(events.map((e) => e.msgId)).size).toBe(100);
    for (const u of bulk.slice(0, 5)) expect(await searchCount(analytics.knex, u)).toBe(0);
  });
});
