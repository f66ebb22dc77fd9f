import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { connectPrivacyService } from '../../src/client/privacy-client.js';
import { purgedEventFor } from '../../src/events/cloudevents.js';
import { receiptSubject } from '../../src/events/subjects.js';
import { ConfirmationState, RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, freePort, requirePostgres, startPostgres, sqlOn } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { natsClient, storedMessages, waitFor } from '../support/streams.js';

/**
 * The server's half of the event contract against a real nats-server: the outbox, the relay,
 * the CloudEvent, and the confirmation ledger fed by receipts (published here as a downstream
 * sidecar would).
 */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();
const STREAM = 'LETHE_PRIVACY';
const REASON = 'GDPR Right to be Forgotten';

describe.runIf(pgBin !== undefined && natsBin !== undefined)('anonymization events on NATS JetStream', () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let url: string;
  let t: TestServer;
  let nc: NatsConnection;
  const sql = sqlOn(() => url);
  const receipt = async (service: string, userId: string, requestId: string, status: 'purged' | 'failed' = 'purged') => {
    const event = purgedEventFor(`lethe-sidecar/${service}`, {
      user_id: userId,
      request_id: requestId,
      service,
      status,
      purged_at: new Date().toISOString(),
      rows_affected: status === 'purged' ? [{ table: 'orders', action: 'update', rows: 2 }] : [],
      ...(status === 'failed' ? { error: 'DatabaseError 42501' } : {}),
    });
    await jetstream(nc).publish(receiptSubject(service), JSON.stringify(event), { msgID: event.id });
  };

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
    url = await cluster.createDatabase();
    t = await startTestServer({
      DATABASE_URL: url,
      LETHE_NATS_URL: nats.url,
      LETHE_DOWNSTREAM_SERVICES: 'orders,analytics',
      LETHE_CONFIRMATION_TIMEOUT: '3s',
      LETHE_EVENT_SOURCE: 'lethe-test',
    });
    nc = await natsClient(nats.url);
    await sql(`INSERT INTO users (id, email) SELECT 'bulk-' || lpad(i::text, 3, '0'), 'bulk' || i || '@example.com' FROM generate_series(1, 100) i`);
    await sql(`INSERT INTO users (id, email) VALUES ('consumer-gone-1', 'consumer-gone-1@example.com')`);
  });
  afterAll(async () => {
    await nc?.close();
    await t?.stop();
    await nats?.destroy();
    await cluster?.destroy();
  });

  it('publishes a CloudEvent for a forget, with the event id as Nats-Msg-Id, and marks the outbox row sent', async () => {
    const client = await t.clientAs('platform-owner-id');
    const r = await client.forgetUser({ userId: 'member-user-id-456', reason: REASON, idempotencyKey: randomUUID() });
    const stored = await waitFor('the event in the stream', async () =>
      (await storedMessages(nc, STREAM, 'privacy.v1.user.anonymized')).find((m) => (m.json.data as { request_id?: string }).request_id === r.requestId),
    );
    expect(stored.subject).toBe('privacy.v1.user.anonymized');
    expect(stored.json).toEqual({
      specversion: '1.0',
      id: stored.msgId,
      source: 'lethe-test',
      type: 'dev.lethe.privacy.user.anonymized.v1',
      subject: 'member-user-id-456',
      time: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/) as string,
      datacontenttype: 'application/json',
      data: { user_id: 'member-user-id-456', request_id: r.requestId, anonymized_at: (stored.json as { time: string }).time },
    });
    expect(JSON.stringify(stored.json)).not.toMatch(/@example\.com/);
    await waitFor(
      'the outbox row marked sent',
      async () => (await sql<{ sent_at: Date | null }>('SELECT sent_at FROM lethe_outbox WHERE id = $1', [stored.msgId]))[0]?.sent_at !== null,
    );

    const { request } = await client.getPrivacyRequest({ id: r.requestId });
    expect(request?.state).toBe(RequestState.REQUEST_STATE_ANONYMIZED);
    expect(request?.confirmations.map((c) => [c.service, c.state])).toEqual([
      ['orders', ConfirmationState.CONFIRMATION_STATE_PENDING],
      ['analytics', ConfirmationState.CONFIRMATION_STATE_PENDING],
    ]);
  });

  it('completes a forget when every expected service has confirmed, and shows a failure and overdue requests', async () => {
    const client = await t.clientAs('platform-owner-id');
    const done = await client.forgetUser({ userId: 'owner-user-id-1', reason: REASON, idempotencyKey: randomUUID() });
    const stuck = await client.forgetUser({ userId: 'owner-user-id-2', reason: REASON, idempotencyKey: randomUUID() });
    await receipt('orders', 'owner-user-id-1', done.requestId);
    await receipt('analytics', 'owner-user-id-1', done.requestId);
    await receipt('orders', 'owner-user-id-2', stuck.requestId, 'failed');
    await jetstream(nc).publish(receiptSubject('orders'), 'not a cloudevent');

    const completed = await waitFor('the request completed', async () => {
      const { request } = await client.getPrivacyRequest({ id: done.requestId });
      return request?.state === RequestState.REQUEST_STATE_COMPLETED ? request : undefined;
    });
    expect(completed.completedAt).toBeInstanceOf(Date);
    expect(completed.confirmations).toEqual([
      {
        service: 'analytics',
        state: ConfirmationState.CONFIRMATION_STATE_PURGED,
        purgedAt: expect.any(Date) as Date,
        rowsAffected: [{ table: 'orders', action: 'update', rows: 2 }],
        error: '',
      },
      {
        service: 'orders',
        state: ConfirmationState.CONFIRMATION_STATE_PURGED,
        purgedAt: expect.any(Date) as Date,
        rowsAffected: [{ table: 'orders', action: 'update', rows: 2 }],
        error: '',
      },
    ]);

    const failed = await waitFor('the failure recorded', async () => {
      const { request } = await client.getPrivacyRequest({ id: stuck.requestId });
      return request?.confirmations.find((c) => c.state === ConfirmationState.CONFIRMATION_STATE_FAILED) ? request : undefined;
    });
    expect(failed.state).toBe(RequestState.REQUEST_STATE_ANONYMIZED);
    expect(failed.confirmations.map((c) => [c.service, c.state, c.error])).toEqual([
      ['orders', ConfirmationState.CONFIRMATION_STATE_FAILED, 'DatabaseError 42501'],
      ['analytics', ConfirmationState.CONFIRMATION_STATE_PENDING, ''],
    ]);

    // LETHE_CONFIRMATION_TIMEOUT is 3 s here.
    const overdue = await waitFor(
      'the stuck request overdue',
      async () => {
        const list = await client.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: true, pageSize: 50, pageToken: '' });
        return list.requests.some((q) => q.id === stuck.requestId) ? list : undefined;
      },
      10_000,
    );
    expect(overdue.requests.map((q) => q.id)).not.toContain(done.requestId);
    expect(overdue.requests.every((q) => q.overdue)).toBe(true);
  });

  it('re-creates the ledger consumer when it is deleted: a later receipt is still recorded', async () => {
    const client = await t.clientAs('platform-owner-id');
    const forgot = await client.forgetUser({ userId: 'consumer-gone-1', reason: REASON, idempotencyKey: randomUUID() });
    const jsm = await jetstream(nc).jetstreamManager();
    await jsm.consumers.delete(STREAM, 'lethe-ledger');
    await waitFor('the ledger consumer re-created', async () => (await jsm.consumers.info(STREAM, 'lethe-ledger').catch(() => undefined)) ?? undefined, 15_000);
    await receipt('orders', 'consumer-gone-1', forgot.requestId);
    await receipt('analytics', 'consumer-gone-1', forgot.requestId);
    const completed = await waitFor('the request completed', async () => {
      const { request } = await client.getPrivacyRequest({ id: forgot.requestId });
      return request?.state === RequestState.REQUEST_STATE_COMPLETED ? request : undefined;
    });
    expect(completed.confirmations.map((c) => [c.service, c.state])).toEqual([
      ['analytics', ConfirmationState.CONFIRMATION_STATE_PURGED],
      ['orders', ConfirmationState.CONFIRMATION_STATE_PURGED],
    ]);
  });

  it('loses nothing while NATS is away: 100 forgets, then every event exactly once and every request completed', async () => {
    const client = await t.clientAs('platform-owner-id');
    await nats.stop();
    const results = [];
    for (let i = 1; i <= 100; i++) {
      results.push(await client.forgetUser({ userId: `bulk-${String(i).padStart(3, '0')}`, reason: REASON, idempotencyKey: `bulk-${i}` }));
    }
    expect((await sql<{ n: number }>('SELECT count(*)::int AS n FROM lethe_outbox WHERE sent_at IS NULL'))[0]?.n).toBeGreaterThanOrEqual(100);
    await nats.start();
    const ids = new Set(results.map((r) => r.requestId));
    const events = await waitFor(
      '100 events in the stream',
      async () => {
        const all = (await storedMessages(nc, STREAM, 'privacy.v1.user.anonymized')).filter((m) => ids.has((m.json.data as { request_id: string }).request_id));
        return all.length >= 100 ? all : undefined;
      },
      60_000,
    );
    expect(events).toHaveLength(100);
    expect(new Set(events.map((e) => e.msgId)).size).toBe(100);
    expect(new Set(events.map((e) => (e.json.data as { request_id: string }).request_id))).toEqual(ids);
    expect((await sql<{ n: number }>('SELECT count(*)::int AS n FROM lethe_outbox WHERE sent_at IS NULL'))[0]?.n).toBe(0);

    for (const r of results) {
      await receipt('orders', r.userId, r.requestId);
      await receipt('analytics', r.userId, r.requestId);
    }
    await waitFor(
      'all 100 requests completed',
      async () => {
        const rows = await sql<{ n: number }>(`SELECT count(*)::int AS n FROM lethe_privacy_requests WHERE id = ANY($1::uuid[]) AND state = 'completed'`, [
          [...ids],
        ]);
        return rows[0]?.n === 100;
      },
      60_000,
    );
  });

  it('publishes after a crash: a server killed after the forget committed publishes on restart', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'lethe-crash-'));
    const port = await freePort();
    const serve = (): ChildProcess =>
      spawn('node', [join(process.cwd(), 'bin', 'lethe.js'), 'serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir], {
        env: {
          ...process.env,
          DATABASE_URL: url,
          LETHE_ARTIFACT_KEY: 'ab'.repeat(32),
          LETHE_NATS_URL: nats.url,
          LETHE_DOWNSTREAM_SERVICES: 'orders,analytics',
          LETHE_LOG_LEVEL: 'info',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    const started = async (p: ChildProcess) => {
      let log = '';
      p.stdout?.on('data', (d: Buffer) => (log += d.toString()));
      p.stderr?.on('data', (d: Buffer) => (log += d.toString()));
      await waitFor('lethe serve listening', async () => {
        if (p.exitCode !== null) throw new Error(`lethe serve exited: ${log}`);
        return log.includes('lethe PrivacyService listening');
      });
    };
    try {
      await nats.stop(); // the publish cannot happen before the kill
      const first = serve();
      await started(first);
      const { client, close } = connectPrivacyService(`127.0.0.1:${port}`, await mintLocalToken(dataDir, 'platform-owner-id', 60));
      const r = await client.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: randomUUID() });
      close();
      const exited = new Promise((res) => first.once('exit', res));
      first.kill('SIGKILL');
      await exited;
      expect(
        (await sql<{ sent_at: Date | null }>(`SELECT o.sent_at FROM lethe_outbox o WHERE o.payload::jsonb -> 'data' ->> 'request_id' = $1`, [r.requestId]))[0],
      ).toEqual({ sent_at: null });

      await nats.start();
      const second = serve();
      await started(second);
      try {
        const stored = await waitFor('the event published after the restart', async () => {
          const found = (await storedMessages(nc, STREAM, 'privacy.v1.user.anonymized')).filter(
            (m) => (m.json.data as { request_id: string }).request_id === r.requestId,
          );
          return found.length > 0 ? found : undefined;
        });
        expect(stored).toHaveLength(1);
      } finally {
        second.kill('SIGTERM');
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
