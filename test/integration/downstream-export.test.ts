import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadExportVerifyKey } from '../../src/auth/export-keys.js';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { type ReceivedExport, receiveExport } from '../../src/client/export-receiver.js';
import { sealExportRequest } from '../../src/events/export-protocol.js';
import { exportRequestSubject } from '../../src/events/subjects.js';
import { ArtifactState, ConfirmationState, DownstreamStatus, RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { ANALYTICS_SERVICE, ORDERS_SERVICE, createAnalyticsSchema, createOrdersSchema, seedAnalytics, seedOrders } from '../fixtures/downstream/index.js';
import { type TestSidecar, startTestSidecar } from '../fixtures/downstream/sidecar.js';
import { FAKE_RECORDS, type FakeBehaviour, FakeExportSidecar } from '../support/fake-export-sidecar.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { natsClient, waitFor } from '../support/streams.js';

/**
 * Platform-wide access: an export asks every downstream service's sidecar for its copy over NATS.
 * Two real sidecars (orders, analytics: different schemas and data maps) and a third service,
 * "search", played by a misbehaving fake for the faults.
 */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();
const SEARCH = 'search';
const TIMEOUT_MS = 1_500;

interface Document {
  user: unknown;
  downstream: Record<string, Record<string, unknown>>;
  downstream_export: Record<string, { status: string; records: number; error?: string }>;
}

describe.runIf(pgBin !== undefined && natsBin !== undefined)('downstream services contribute their copies to the export', () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let orders: Database;
  let analytics: Database;
  let identity: Database;
  let server: TestServer;
  let sidecars: TestSidecar[] = [];
  let nc: NatsConnection;
  let fake: FakeExportSidecar | undefined;
  const verifyKeyFile = () => join(server.dataDir, 'export-signing-key.pub.pem');

  const exportOf = async (userId: string): Promise<{ doc: Document; text: string; received: ReceivedExport; progress: string[] }> => {
    const client = await server.clientAs('platform-owner-id');
    const chunks: string[] = [];
    const progress: string[] = [];
    const received = await receiveExport(
      client.exportUser({ userId, reason: '' }),
      (c) => void chunks.push(c),
      undefined,
      (o) => progress.push(`${o.service}:${o.status}`),
    );
    const text = chunks.join('');
    return { doc: JSON.parse(text) as Document, text, received, progress };
  };
  const useFake = (behaviour: FakeBehaviour, onRequest?: () => Promise<void>) => {
    fake = new FakeExportSidecar(nc, SEARCH, verifyKey, behaviour, onRequest);
  };
  let verifyKey: Awaited<ReturnType<typeof loadExportVerifyKey>>;

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
    const identityUrl = await cluster.createDatabase();
    identity = await openDatabase({ kind: 'postgres', url: identityUrl });
    const ordersUrl = await cluster.createDatabase();
    const analyticsUrl = await cluster.createDatabase();
    orders = await openDatabase({ kind: 'postgres', url: ordersUrl });
    analytics = await openDatabase({ kind: 'postgres', url: analyticsUrl });
    await createOrdersSchema(orders.knex);
    await createAnalyticsSchema(analytics.knex);
    await seedOrders(orders.knex, 'user-id-123');
    await seedAnalytics(analytics.knex, 'user-id-123');
    await seedOrders(orders.knex, 'member-user-id-456');
    server = await startTestServer({
      DATABASE_URL: identityUrl,
      LETHE_NATS_URL: nats.url,
      LETHE_DOWNSTREAM_SERVICES: `${SEARCH},${ORDERS_SERVICE},${ANALYTICS_SERVICE}`,
      LETHE_DOWNSTREAM_EXPORT_TIMEOUT: `${TIMEOUT_MS}ms`,
    });
    const env = { LETHE_EXPORT_VERIFY_KEY_FILE: verifyKeyFile() };
    sidecars = [
      await startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: ordersUrl, natsUrl: nats.url, env }),
      await startTestSidecar({ service: ANALYTICS_SERVICE, databaseUrl: analyticsUrl, natsUrl: nats.url, env }),
    ];
    verifyKey = await loadExportVerifyKey(verifyKeyFile(), 'test');
    nc = await natsClient(nats.url);
  });

  afterEach(() => {
    fake?.stop();
    fake = undefined;
  });

  afterAll(async () => {
    await nc?.close();
    for (const s of sidecars) await s.stop();
    await server?.stop();
    await orders?.close();
    await analytics?.close();
    await identity?.close();
    await nats?.destroy();
    await cluster?.destroy();
  });

  it('puts each service’s rows in its own section, in a stable order, under one digest, and records each part in the ledger', async () => {
    useFake('answers-twice');
    const { doc, received, progress } = await exportOf('user-id-123');

    expect(received.header.downstreamServices).toEqual([ANALYTICS_SERVICE, ORDERS_SERVICE, SEARCH]);
    expect(Object.keys(doc.downstream)).toEqual([ANALYTICS_SERVICE, ORDERS_SERVICE, SEARCH]);
    // analytics: its data map's limit (3 of 4 page views, with the count), searches newest first.
    expect(doc.downstream[ANALYTICS_SERVICE]).toEqual({
      page_views_count: 4,
      page_views: [
        { url: '/', ip_address: '203.0.113.7', user_agent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' },
        { url: '/pricing', ip_address: '203.0.113.7', user_agent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' },
        { url: '/checkout', ip_address: '198.51.100.23', user_agent: 'Safari/17.0' },
      ],
      search_history: [{ query: 'running shoes size 44' }, { query: 'user-id-123 birthday gift' }],
    });
    // orders: the subject's two orders and three addresses, nobody else's.
    const ordersPart = doc.downstream[ORDERS_SERVICE] as { orders: Array<{ email: string; total_cents: number }>; shipping_addresses: unknown[] };
    expect(ordersPart.orders.map((o) => [o.email, o.total_cents])).toEqual([
      ['user-id-123@example.com', 4_990],
      ['user-id-123@example.com', 12_500],
    ]);
    expect(ordersPart.shipping_addresses).toHaveLength(3);
    // search answered twice at once: the first answer stands, the second was told to stop.
    expect(doc.downstream[SEARCH]).toEqual({ searches: FAKE_RECORDS.map((r) => JSON.parse(r) as unknown) });
    expect(fake?.replies).toContain(JSON.stringify({ stop: 'another sidecar is already answering this export' }));

    expect(doc.downstream_export).toEqual({
      analytics: { status: 'complete', records: 5 },
      orders: { status: 'complete', records: 5 },
      search: { status: 'complete', records: 2 },
    });
    expect(received.partial).toBe(false);
    expect(progress).toEqual(['analytics:complete', 'orders:complete', 'search:complete']);
    expect(received.trailer.downstream.map((o) => o.status)).toEqual([
      DownstreamStatus.DOWNSTREAM_STATUS_COMPLETE,
      DownstreamStatus.DOWNSTREAM_STATUS_COMPLETE,
      DownstreamStatus.DOWNSTREAM_STATUS_COMPLETE,
    ]);

    const client = await server.clientAs('platform-owner-id');
    const { request } = await client.getPrivacyRequest({ id: received.header.requestId });
    expect(request?.state).toBe(RequestState.REQUEST_STATE_COMPLETED);
    expect(request?.error).toBe('');
    expect(request?.confirmations.map((c) => [c.service, c.state])).toEqual([
      [ANALYTICS_SERVICE, ConfirmationState.CONFIRMATION_STATE_EXPORTED],
      [ORDERS_SERVICE, ConfirmationState.CONFIRMATION_STATE_EXPORTED],
      [SEARCH, ConfirmationState.CONFIRMATION_STATE_EXPORTED],
    ]);
  });

  it('the HTTP export carries the same sections: the document parses, with each service’s part and outcome', async () => {
    useFake('answers-twice');
    const token = await mintLocalToken(server.dataDir, 'user-id-123', 60);
    const r = await fetch(`http://127.0.0.1:${server.server.httpPort ?? 0}/api/privacy/export/user-id-123`, { headers: { authorization: `Bearer ${token}` } });
    expect(r.status).toBe(200);
    const doc = (await r.json()) as Document;
    expect(Object.keys(doc.downstream)).toEqual([ANALYTICS_SERVICE, ORDERS_SERVICE, SEARCH]);
    expect(doc.downstream_export[ORDERS_SERVICE]).toEqual({ status: 'complete', records: 5 });
    expect((doc.downstream[ORDERS_SERVICE] as { orders: unknown[] }).orders).toHaveLength(2);
  });

  const faults: Array<[FakeBehaviour | 'absent', string, RegExp]> = [
    ['absent', 'failed', /^no sidecar of the service is listening for exports$/],
    ['never-starts', 'timed_out', /^did not start its answer within 1\.5s$/],
    ['dies-mid-stream', 'timed_out', /^stopped answering for 1\.5s$/],
    ['malformed', 'failed', /^sent a chunk that does not decrypt with this export’s key$/],
    ['oversized', 'failed', /^sent a chunk of 819200 bytes \(at most 786432\)$/],
    ['not-objects', 'failed', /^sent a record that is not a JSON object$/],
  ];
  it.each(faults)('a sidecar that %s: the export ends in time, marked partial, with the rest of the document intact', async (behaviour, status, error) => {
    if (behaviour !== 'absent') useFake(behaviour);
    const started = performance.now();
    const { doc, received } = await exportOf('user-id-123');
    expect(performance.now() - started).toBeLessThan(TIMEOUT_MS * 4);

    expect(received.partial).toBe(true);
    expect(doc.downstream_export[SEARCH]?.status).toBe(status);
    expect(doc.downstream_export[SEARCH]?.error).toMatch(error);
    expect(doc.downstream_export[ANALYTICS_SERVICE]).toEqual({ status: 'complete', records: 5 });
    expect(doc.downstream_export[ORDERS_SERVICE]).toEqual({ status: 'complete', records: 5 });
    expect(Object.keys(doc.downstream[ORDERS_SERVICE] ?? {})).toEqual(['shipping_addresses', 'orders']);
    // No error message carries the data (the fake's records, or the subject).
    expect(JSON.stringify(doc.downstream_export)).not.toMatch(/user-id-123|first|second/);
    if (behaviour === 'dies-mid-stream') expect(doc.downstream[SEARCH]).toEqual({ searches: [JSON.parse(FAKE_RECORDS[0] ?? '') as unknown] });

    const client = await server.clientAs('platform-owner-id');
    const { request } = await client.getPrivacyRequest({ id: received.header.requestId });
    expect(request?.error).toMatch(/^partial: search (timed out|failed)/);
    const search = request?.confirmations.find((c) => c.service === SEARCH);
    expect(search?.state).toBe(status === 'failed' ? ConfirmationState.CONFIRMATION_STATE_FAILED : ConfirmationState.CONFIRMATION_STATE_TIMED_OUT);
    expect(search?.error).toMatch(error);
  });

  it('a slow sidecar, each chunk within the timeout: its part is complete, however long it takes in all', async () => {
    useFake('slow');
    const started = performance.now();
    const { doc, received } = await exportOf('user-id-123');
    expect(performance.now() - started).toBeGreaterThan(3 * 1_000);
    expect(received.partial).toBe(false);
    expect(doc.downstream[SEARCH]).toEqual({ searches: FAKE_RECORDS.map((r) => JSON.parse(r) as unknown) });
  });

  it('NATS restarting during an export: the service in hand gets an outcome in time, the document is whole otherwise, and the next export is complete', async () => {
    let restarted = false;
    useFake('answers-twice', async () => {
      if (restarted) return;
      restarted = true;
      await nats.stop();
    });
    const started = performance.now();
    const { doc, received } = await exportOf('user-id-123');
    expect(performance.now() - started).toBeLessThan(TIMEOUT_MS * 4);
    expect(received.partial).toBe(true);
    expect(doc.downstream_export[SEARCH]?.status).toMatch(/^(timed_out|failed)$/);
    expect(doc.downstream_export[ORDERS_SERVICE]).toEqual({ status: 'complete', records: 5 });

    await nats.start();
    const whole = await waitFor(
      'a complete export once NATS is back',
      async () => {
        const r = await exportOf('user-id-123');
        return r.received.partial ? undefined : r;
      },
      30_000,
    );
    expect(whole.doc.downstream_export).toEqual({
      analytics: { status: 'complete', records: 5 },
      orders: { status: 'complete', records: 5 },
      search: { status: 'complete', records: 2 },
    });
  });

  it.each(['ExportUser', 'StoreExport'] as const)(
    '%s: while a service is asked for its part, no transaction of the server is left open on its database',
    async (call) => {
      // Sessions of the server's database idle inside a transaction for a while (not a statement's
      // gap), and the advisory locks held meanwhile: StoreExport's key (exclusive) and subject (shared).
      const seen: Array<{ idle: string[]; locks: string[] }> = [];
      useFake('answers-twice', async () => {
        await new Promise((r) => setTimeout(r, 300));
        const { rows: idle } = (await identity.knex.raw(
          `SELECT state, left(query, 100) AS query FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid()
             AND state LIKE 'idle in transaction%' AND clock_timestamp() - state_change > interval '200 milliseconds'`,
        )) as { rows: Array<{ state: string; query: string }> };
        const { rows: locks } = (await identity.knex.raw(
          `SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY mode`,
        )) as { rows: Array<{ mode: string }> };
        seen.push({ idle: idle.map((r) => `${r.state}: ${r.query}`), locks: locks.map((l) => l.mode) });
      });
      const client = await server.clientAs('platform-owner-id');
      if (call === 'ExportUser') {
        expect((await exportOf('user-id-123')).received.partial).toBe(false);
      } else {
        const stored = await client.storeExport({ userId: 'user-id-123', reason: '', idempotencyKey: `no-open-transaction-${randomUUID()}`, requestedBy: '' });
        const { request } = await client.getPrivacyRequest({ id: stored.requestId });
        expect([request?.state, request?.error]).toEqual([RequestState.REQUEST_STATE_COMPLETED, '']);
        expect(request?.confirmations.map((c) => c.state)).toEqual(Array(3).fill(ConfirmationState.CONFIRMATION_STATE_EXPORTED));
      }
      expect(seen).toEqual([{ idle: [], locks: call === 'StoreExport' ? ['ExclusiveLock', 'ShareLock'] : [] }]);
    },
  );

  it('a forget of the subject while StoreExport waits on a service: the forget waits until the artifact is stored, then erases it', async () => {
    const client = await server.clientAs('platform-owner-id');
    const order: string[] = [];
    let forgetting: Promise<unknown> | undefined;
    useFake('answers-twice', async () => {
      forgetting ??= client
        .forgetUser({ userId: 'member-user-id-456', reason: 'GDPR Art. 17', idempotencyKey: `forget-${randomUUID()}`, requestedBy: '' })
        .then(() => order.push('forgotten'));
      await new Promise((r) => setTimeout(r, 500));
    });
    const stored = await client.storeExport({ userId: 'member-user-id-456', reason: '', idempotencyKey: `forget-race-${randomUUID()}`, requestedBy: '' });
    order.push('stored');
    await forgetting;
    expect(order).toEqual(['stored', 'forgotten']);
    expect(stored.artifact?.state).toBe(ArtifactState.ARTIFACT_STATE_AVAILABLE);
    const { request } = await client.getPrivacyRequest({ id: stored.requestId });
    expect(request?.artifact?.state).toBe(ArtifactState.ARTIFACT_STATE_ERASED);
    expect(await identity.knex('lethe_export_artifact_chunks').where({ request_id: stored.requestId })).toEqual([]);
    expect(await identity.knex('lethe_export_artifact_keys').where({ request_id: stored.requestId })).toEqual([]);
  });

  it('a sidecar answers only what the server signed: a forged request gets a refusal and no data', async () => {
    const { generateKeyPair } = await import('jose');
    const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const inbox = `_INBOX.forged.${randomUUID()}`;
    const received: string[] = [];
    const sub = nc.subscribe(inbox);
    void (async () => {
      for await (const m of sub) received.push(m.string());
    })();
    const { token } = await sealExportRequest(privateKey, { subjectId: 'user-id-123', requestId: randomUUID(), service: ORDERS_SERVICE, reply: inbox });
    const reply = await nc.request(exportRequestSubject(ORDERS_SERVICE), token, { timeout: 5_000 });
    expect(JSON.parse(reply.string())).toEqual({ refused: 'the request is not signed by the server for this service, or has expired' });
    await new Promise((r) => setTimeout(r, 500));
    sub.unsubscribe();
    expect(received).toEqual([]);
  });
});
