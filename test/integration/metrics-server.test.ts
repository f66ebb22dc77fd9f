import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { receiveExport } from '../../src/client/export-receiver.js';
import { status } from '../support/grpc-status.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { sample, scrape } from '../support/prometheus.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

const bin = requirePostgres();
const EXPORT = 'lethe.privacy.v1.PrivacyService/ExportUser';
const FORGET = 'lethe.privacy.v1.PrivacyService/ForgetUser';

describe.runIf(bin !== undefined)('server metrics (LETHE_METRICS_LISTEN) on PostgreSQL', () => {
  let cluster: PostgresCluster;
  let t: TestServer;
  let off: TestServer;
  let metricsPort: number;
  let url: string;

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    url = await cluster.createDatabase();
    t = await startTestServer({ DATABASE_URL: url, LETHE_METRICS_LISTEN: '127.0.0.1:0' });
    metricsPort = t.server.metricsPort ?? 0;
  });
  afterAll(async () => {
    await t?.stop();
    await off?.stop();
    await cluster?.destroy();
  });

  it('binds the metrics port only when asked', async () => {
    expect(metricsPort).toBeGreaterThan(0);
    off = await startTestServer({ DATABASE_URL: await cluster.createDatabase() });
    expect(off.server.metricsPort).toBeUndefined();
  });

  it('counts calls by method and code, privacy requests, exported records and the outbox, with no personal data', async () => {
    const before = (await scrape(metricsPort)).body;
    expect(sample(before, 'lethe_outbox_pending')).toBe(0);
    expect(sample(before, 'lethe_grpc_requests_total', { method: EXPORT, code: 'OK' })).toBeUndefined();

    const self = await t.clientAs('user-id-123');
    const exported = await receiveExport(self.exportUser({ userId: 'user-id-123', reason: '' }), () => undefined);
    expect(exported.trailer.totalRecords).toBeGreaterThan(0);
    const member = await t.clientAs('member-user-id-456');
    expect(await status(receiveExport(member.exportUser({ userId: 'user-id-123', reason: '' }), () => undefined))).toMatchObject({ code: 'PERMISSION_DENIED' });
    const owner = await t.clientAs('owner-user-id-2');
    const stored = await owner.storeExport({ userId: 'member-user-id-456', idempotencyKey: 'metrics-store-1', reason: '' });
    const replay = await owner.storeExport({ userId: 'member-user-id-456', idempotencyKey: 'metrics-store-1', reason: '' });
    expect(replay.replayed).toBe(true);
    const forgot = await owner.forgetUser({ userId: 'member-user-id-456', reason: 'GDPR Right to be Forgotten', idempotencyKey: 'metrics-forget-1' });
    expect(forgot.success).toBe(true);

    const { contentType, body } = await scrape(metricsPort);
    expect(contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(sample(body, 'lethe_grpc_requests_total', { method: EXPORT, code: 'OK' })).toBe(1);
    expect(sample(body, 'lethe_grpc_requests_total', { method: EXPORT, code: 'PERMISSION_DENIED' })).toBe(1);
    expect(sample(body, 'lethe_grpc_requests_total', { method: FORGET, code: 'OK' })).toBe(1);
    expect(sample(body, 'lethe_grpc_requests_total', { method: 'lethe.privacy.v1.PrivacyService/StoreExport', code: 'OK' })).toBe(2);
    expect(sample(body, 'lethe_grpc_request_duration_seconds_count', { method: EXPORT })).toBe(2);
    expect(sample(body, 'lethe_grpc_request_duration_seconds_bucket', { method: FORGET, le: '+Inf' })).toBe(1);
    expect(sample(body, 'lethe_privacy_requests_total', { type: 'export', outcome: 'succeeded' })).toBe(3);
    expect(sample(body, 'lethe_privacy_requests_total', { type: 'export', outcome: 'refused' })).toBe(1);
    expect(sample(body, 'lethe_privacy_requests_total', { type: 'forget', outcome: 'succeeded' })).toBe(1);
    // The stream's trailer and the stored artifact's description; the replay ran nothing.
    expect(sample(body, 'lethe_export_records_total')).toBe(exported.trailer.totalRecords + (stored.artifact?.totalRecords ?? 0));
    // No NATS here: the forget's event waits in the outbox.
    expect(sample(body, 'lethe_outbox_pending')).toBe(1);
    expect(sample(body, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);

    for (const personal of [
      'user-id-123',
      'member-user-id-456',
      'owner-user-id-2',
      '@example.com',
      forgot.requestId,
      stored.requestId,
      exported.header.requestId,
    ]) {
      expect(body).not.toContain(personal);
    }
  });

  it('counts an export stream the caller abandoned as CANCELLED, not OK', async () => {
    const before = sample((await scrape(metricsPort)).body, 'lethe_grpc_requests_total', { method: EXPORT, code: 'CANCELLED' }) ?? 0;
    // The export waits on a lock the test holds on a table it reads, so that the caller gives up
    // while it runs (a typical export is otherwise read and sent in one go).
    const blocker = new pg.Client({ connectionString: url });
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE login_events IN ACCESS EXCLUSIVE MODE');
    try {
      const self = await t.clientAs('user-id-123');
      const abort = new AbortController();
      const consumed = (async () => {
        for await (const _ of self.exportUser({ userId: 'user-id-123', reason: '' }, { signal: abort.signal })) {
          // nothing arrives before the abort
        }
      })();
      consumed.catch(() => undefined);
      await expect
        .poll(
          async () => (await blocker.query(`SELECT count(*)::int AS n FROM pg_locks WHERE relation = 'login_events'::regclass AND NOT granted`)).rows[0]?.n,
          {
            timeout: 5_000,
          },
        )
        .toBe(1);
      abort.abort();
      await expect(consumed).rejects.toThrow();
    } finally {
      await blocker.query('ROLLBACK');
      await blocker.end();
    }
    await expect
      .poll(async () => sample((await scrape(metricsPort)).body, 'lethe_grpc_requests_total', { method: EXPORT, code: 'CANCELLED' }), { timeout: 5_000 })
      .toBe(before + 1);
  });

  it('shows open requests overdue and due within 7 days', async () => {
    const before = (await scrape(metricsPort)).body;
    const overdue0 = sample(before, 'lethe_privacy_requests_overdue') ?? 0;
    const soon0 = sample(before, 'lethe_privacy_requests_due_within_7d') ?? 0;
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const insert = `INSERT INTO lethe_privacy_requests (id, type, subject_id, requester, reason, state, received_at, due_at) VALUES ($1, 'export', 'user-id-123', 'x', '', $2, now() - interval '40 days', $3)`;
      await c.query(insert, [randomUUID(), 'running', new Date(Date.now() - 86_400_000)]);
      await c.query(insert, [randomUUID(), 'scheduled', new Date(Date.now() + 3 * 86_400_000)]);
      await c.query(insert, [randomUUID(), 'completed', new Date(Date.now() - 86_400_000)]);
    } finally {
      await c.end();
    }
    const after = (await scrape(metricsPort)).body;
    expect(sample(after, 'lethe_privacy_requests_overdue')).toBe(overdue0 + 1);
    expect(sample(after, 'lethe_privacy_requests_due_within_7d')).toBe(soon0 + 1);
  });
});
