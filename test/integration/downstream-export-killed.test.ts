import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { receiveArtifact } from '../../src/client/artifact-receiver.js';
import { receiveExport } from '../../src/client/export-receiver.js';
import type { PrivacyClient } from '../../src/client/privacy-client.js';
import { ConfirmationState, type ExportUserResponse, RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import {
  ANALYTICS_DATA_MAP,
  FIXTURE_HASH_KEY,
  ORDERS_DATA_MAP,
  ORDERS_SERVICE,
  createAnalyticsSchema,
  createOrdersSchema,
  seedAnalytics,
  seedOrders,
} from '../fixtures/downstream/index.js';
import { type TestSidecar, startTestSidecar } from '../fixtures/downstream/sidecar.js';
import { EXPECTED_USER_123 } from '../support/expected-export.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { hasExited } from '../support/processes.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { eventually, spawnLethe } from '../support/sidecar-harness.js';
import { natsClient } from '../support/streams.js';

/**
 * A real `lethe sidecar` process killed (SIGKILL) while it streams its part of an export: the
 * orders service, holding ORDERS rows of the subject, in a child process; beside it a second
 * service with another data map ("tracking", the analytics fixture's map) whose sidecar stays up.
 * Services are asked in name order, so tracking is asked after the killed one.
 */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();
const SUBJECT = 'user-id-123';
const TRACKING = 'tracking';
const TIMEOUT_MS = 2_000;
/** About 17 MB of JSON: well over a hundred chunks, far more than flow control lets ahead. */
const ORDERS = 100_000;

interface Document {
  login_events: unknown[];
  downstream: Record<string, Record<string, unknown[]>>;
  downstream_export: Record<string, { status: string; records: number; error?: string }>;
}

type Child = ReturnType<typeof spawnLethe>;

describe.runIf(pgBin !== undefined && natsBin !== undefined)('a downstream sidecar process killed in the middle of an export', () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let ordersUrl: string;
  let ordersDb: Database;
  let tracking: TestSidecar;
  let server: TestServer;
  let nc: NatsConnection;
  let child: Child | undefined;
  const verifyKeyFile = () => join(server.dataDir, 'export-signing-key.pub.pem');

  /** `lethe sidecar` for orders, as its own process, once it answers export requests. */
  const startOrdersProcess = async (): Promise<Child> => {
    const c = spawnLethe(['sidecar', '--service', ORDERS_SERVICE, '--data-map', ORDERS_DATA_MAP, '--health-listen', '127.0.0.1:0'], {
      DATABASE_URL: ordersUrl,
      LETHE_NATS_URL: nats.url,
      LETHE_HASH_KEY: FIXTURE_HASH_KEY,
      LETHE_EXPORT_VERIFY_KEY_FILE: verifyKeyFile(),
    });
    child = c;
    await eventually(
      'the orders sidecar to answer export requests',
      () => {
        if (hasExited(c.child)) throw new Error(`lethe sidecar exited: ${c.output()}`);
        return c.lines().find((l) => l.msg === 'answering export requests');
      },
      60_000,
    );
    return c;
  };
  const kill = async (c: Child): Promise<number> => {
    c.child.kill('SIGKILL');
    expect(await c.exited(10_000)).toEqual({ code: null, signal: 'SIGKILL' });
    return performance.now();
  };

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
    const identityUrl = await cluster.createDatabase();
    ordersUrl = await cluster.createDatabase();
    const trackingUrl = await cluster.createDatabase();
    ordersDb = await openDatabase({ kind: 'postgres', url: ordersUrl });
    await createOrdersSchema(ordersDb.knex);
    await seedOrders(ordersDb.knex, SUBJECT);
    await seedOrders(ordersDb.knex, 'member-user-id-456');
    await ordersDb.knex.raw(
      `INSERT INTO orders (user_id, email, customer_name, phone, total_cents)
       SELECT ?, ?, ?, '+33 6 12 34 56 78', g FROM generate_series(1, ?::int) g`,
      [SUBJECT, `${SUBJECT}@example.com`, `Customer ${SUBJECT}`, ORDERS - 2],
    );
    await ordersDb.knex.raw('VACUUM ANALYZE orders');
    const trackingDb = await openDatabase({ kind: 'postgres', url: trackingUrl });
    await createAnalyticsSchema(trackingDb.knex);
    await seedAnalytics(trackingDb.knex, SUBJECT);
    await trackingDb.close();

    server = await startTestServer({
      DATABASE_URL: identityUrl,
      LETHE_NATS_URL: nats.url,
      LETHE_DOWNSTREAM_SERVICES: `${TRACKING},${ORDERS_SERVICE}`,
      LETHE_DOWNSTREAM_EXPORT_TIMEOUT: `${TIMEOUT_MS}ms`,
    });
    tracking = await startTestSidecar({
      service: TRACKING,
      dataMap: ANALYTICS_DATA_MAP,
      databaseUrl: trackingUrl,
      natsUrl: nats.url,
      env: { LETHE_EXPORT_VERIFY_KEY_FILE: verifyKeyFile() },
    });
    nc = await natsClient(nats.url);
  });

  afterEach(() => {
    if (child !== undefined && !hasExited(child.child)) child.child.kill('SIGKILL');
  });

  afterAll(async () => {
    await nc?.close();
    await tracking?.stop();
    await server?.stop();
    await ordersDb?.close();
    await nats?.destroy();
    await cluster?.destroy();
  });

  /** What every variant checks: the document, then the ledger entry. */
  const checkPartialDocument = async (client: PrivacyClient, requestId: string, doc: Document) => {
    // The server's own categories, whole.
    expect(doc).toMatchObject({ ...EXPECTED_USER_123, login_events_count: 247 });
    expect(doc.login_events).toHaveLength(50);

    // orders: the part received before the kill, in order, then an outcome that holds no data.
    const orders = doc.downstream_export[ORDERS_SERVICE];
    expect(orders?.status).toMatch(/^(timed_out|failed)$/);
    expect(orders?.error).toMatch(/^(stopped answering for 2s|the answer was cut off)$/);
    const part = doc.downstream[ORDERS_SERVICE] ?? {};
    expect(part.shipping_addresses).toHaveLength(3);
    const received = (part.orders ?? []) as Array<{ email: string; total_cents: number }>;
    expect(orders?.records).toBe(3 + received.length);
    expect(received.length).toBeGreaterThan(0);
    expect(received.length).toBeLessThan(ORDERS);
    expect(received.slice(0, 3).map((o) => o.total_cents)).toEqual([4_990, 12_500, 1]);
    expect(received.every((o, i) => i < 2 || o.total_cents === i - 1)).toBe(true);
    expect(received.every((o) => o.email === `${SUBJECT}@example.com`)).toBe(true);

    // tracking, asked after the kill, is whole: its own data map (a limit of 3 page views, with the count).
    expect(doc.downstream_export[TRACKING]).toEqual({ status: 'complete', records: 5 });
    expect(doc.downstream[TRACKING]).toEqual({
      page_views_count: 4,
      page_views: [
        { url: '/', ip_address: '203.0.113.7', user_agent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' },
        { url: '/pricing', ip_address: '203.0.113.7', user_agent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' },
        { url: '/checkout', ip_address: '198.51.100.23', user_agent: 'Safari/17.0' },
      ],
      search_history: [{ query: 'running shoes size 44' }, { query: `${SUBJECT} birthday gift` }],
    });
    expect(Object.keys(doc.downstream)).toEqual([ORDERS_SERVICE, TRACKING]);
    expect(JSON.stringify(doc.downstream_export)).not.toMatch(/user-id|example\.com|Customer|\+33|203\.0|shoes/);

    // The ledger: completed, marked partial, one confirmation per service.
    const { request } = await client.getPrivacyRequest({ id: requestId });
    expect(request?.state).toBe(RequestState.REQUEST_STATE_COMPLETED);
    expect(request?.error).toBe(`partial: orders ${orders?.status === 'failed' ? 'failed' : 'timed out'} (see the confirmations)`);
    expect(request?.confirmations.map((c) => [c.service, c.state, c.error])).toEqual([
      [
        ORDERS_SERVICE,
        orders?.status === 'failed' ? ConfirmationState.CONFIRMATION_STATE_FAILED : ConfirmationState.CONFIRMATION_STATE_TIMED_OUT,
        orders?.error,
      ],
      [TRACKING, ConfirmationState.CONFIRMATION_STATE_EXPORTED, ''],
    ]);
  };

  it('ExportUser: the export ends within the timeout, marked partial, the server’s and the other service’s parts whole, the ledger per service', async () => {
    const c = await startOrdersProcess();
    const client = await server.clientAs('platform-owner-id');
    let killedAt: number | undefined;
    // The stream as the client reads it; at the first batch of the service's orders the client
    // stops reading (flow control holds the sidecar back) and kills the sidecar's process.
    async function* killAtFirstOrdersBatch(stream: AsyncIterable<ExportUserResponse>): AsyncGenerator<ExportUserResponse> {
      for await (const m of stream) {
        const p = m.part;
        if (killedAt === undefined && p?.$case === 'batch' && p.value.service === ORDERS_SERVICE && p.value.category === 'orders') killedAt = await kill(c);
        yield m;
      }
    }
    const chunks: string[] = [];
    const received = await receiveExport(killAtFirstOrdersBatch(client.exportUser({ userId: SUBJECT, reason: '' })), (t) => void chunks.push(t));
    const endedAt = performance.now();

    expect(killedAt).toBeDefined();
    expect(endedAt - (killedAt ?? 0)).toBeLessThan(TIMEOUT_MS + 5_000);
    expect(received.partial).toBe(true);
    // The digest held (receiveExport checked it) over a document that says what is missing.
    await checkPartialDocument(client, received.header.requestId, JSON.parse(chunks.join('')) as Document);
  });

  it('StoreExport: the artifact is stored, marked partial, with the same per-service outcomes in the document and the ledger', async () => {
    const c = await startOrdersProcess();
    const client = await server.clientAs('platform-owner-id');
    // Chunks travel to the server's inbox: the first large one says the sidecar is streaming.
    let killing: Promise<number> | undefined;
    const sub = nc.subscribe('_INBOX.>', {
      callback: (_err, m) => {
        if (killing === undefined && m.data.length > 64 * 1024) killing = kill(c);
      },
    });
    const started = performance.now();
    const stored = await client.storeExport({ userId: SUBJECT, reason: '', idempotencyKey: 'killed-sidecar-store', requestedBy: '' });
    sub.unsubscribe();
    const killedAt = await killing;
    expect(killedAt).toBeDefined();
    expect((killedAt ?? 0) - started).toBeLessThan(60_000);
    expect(performance.now() - (killedAt ?? 0)).toBeLessThan(TIMEOUT_MS + 5_000);

    const bytes: Uint8Array[] = [];
    const artifact = await receiveArtifact(client.getExportArtifact({ requestId: stored.requestId }), (b) => void bytes.push(b));
    expect(artifact.sha256).toBe(stored.artifact?.sha256);
    await checkPartialDocument(client, stored.requestId, JSON.parse(Buffer.concat(bytes).toString('utf8')) as Document);
  });

  it('a new sidecar process in its place: the next export is whole, and the process exits promptly on SIGTERM after it', async () => {
    const c = await startOrdersProcess();
    const client = await server.clientAs('platform-owner-id');
    const received = await receiveExport(client.exportUser({ userId: SUBJECT, reason: '' }), () => undefined);
    expect(received.partial).toBe(false);
    expect(received.downstream).toEqual([
      { service: ORDERS_SERVICE, status: 'complete', records: ORDERS + 3 },
      { service: TRACKING, status: 'complete', records: 5 },
    ]);
    // Nothing the export left (a timer of its COPY, say) holds the process up once it drained.
    const signalledAt = Date.now();
    c.child.kill('SIGTERM');
    expect(await c.exited(30_000), c.output()).toEqual({ code: 0, signal: null });
    expect(Date.now() - signalledAt).toBeLessThan(5_000);
  });
});
