import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { type PrivacyClient, connectPrivacyService } from '../../src/client/privacy-client.js';
import { RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { status } from '../support/grpc-status.js';
import { type LetheProcess, startLetheProcess } from '../support/lethe-process.js';
import { type PostgresCluster, requirePostgres, startPostgres, sqlOn } from '../support/postgres.js';

/**
 * A person's own erasure is scheduled after a grace period and carried out exactly once by one
 * of two server processes sharing the database; it can be cancelled meanwhile. Due dates can be
 * extended once by a platform owner.
 */

const pgBin = requirePostgres();
const REASON = 'I am closing my account';

describe.runIf(pgBin !== undefined)('scheduled self-erasure and deadlines (PostgreSQL, two server processes)', () => {
  let cluster: PostgresCluster;
  let url: string;
  let dataDir: string;
  const replicas: LetheProcess[] = [];
  const closers: Array<() => void> = [];
  const sql = sqlOn(() => url);
  const as = async (who: string, replica = 0): Promise<PrivacyClient> => {
    const { client, close } = connectPrivacyService(replicas[replica]?.address ?? '', await mintLocalToken(dataDir, who, 300));
    closers.push(close);
    return client;
  };
  const emailOf = async (id: string) => (await sql<{ email: string }>('SELECT email FROM users WHERE id = $1', [id]))[0]?.email;

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    url = await cluster.createDatabase();
    dataDir = mkdtempSync(join(tmpdir(), 'lethe-scheduling-'));
    const env = { DATABASE_URL: url, LETHE_ARTIFACT_KEY: randomBytes(32).toString('hex'), LETHE_SELF_ERASURE_GRACE: '4s' };
    replicas.push(await startLetheProcess({ dataDir, env }));
    replicas.push(await startLetheProcess({ dataDir, env }));
  });
  afterAll(async () => {
    for (const close of closers) close();
    for (const r of replicas) if (r.process.exitCode === null) r.process.kill('SIGTERM');
    await cluster?.destroy();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('schedules a person’s own erasure, changes nothing meanwhile, then carries it out exactly once', async () => {
    const self = await as('user-id-123');
    const asked = Date.now();
    const r = await self.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: 'self-123', requestedBy: '' });
    expect(r).toMatchObject({ success: true, scheduled: true, rowsAffected: [] });
    expect(r.message).toBe(`Your erasure is scheduled for ${r.scheduledFor?.toISOString()}; until then you can cancel it (privacy request ${r.requestId})`);
    expect((r.scheduledFor?.getTime() ?? 0) - asked).toBeGreaterThan(3_000);
    expect(await emailOf('user-id-123')).toBe('user@example.com');
    expect((await self.getPrivacyRequest({ id: r.requestId })).request?.state).toBe(RequestState.REQUEST_STATE_SCHEDULED);
    // Asking again (another key) answers the same scheduled request.
    const again = await self.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: 'self-123-b', requestedBy: '' });
    expect(again).toMatchObject({ scheduled: true, requestId: r.requestId });

    await vi.waitFor(async () => expect(await emailOf('user-id-123')).toMatch(/^anonymized-\d+@deleted\.local$/), { timeout: 20_000, interval: 250 });
    const done = (await self.getPrivacyRequest({ id: r.requestId })).request;
    expect(done?.state).toBe(RequestState.REQUEST_STATE_COMPLETED);
    expect(done?.completedAt?.getTime()).toBeGreaterThanOrEqual(r.scheduledFor?.getTime() ?? 0);
    // Exactly once across both replicas: one anonymization, one erasure record, one outbox event.
    expect(await sql(`SELECT actor_id FROM audit_log WHERE event_type = 'user_anonymized' AND target_id = 'user-id-123'`)).toEqual([
      { actor_id: 'user-id-123' },
    ]);
    expect(await sql(`SELECT request_id FROM lethe_erasures WHERE subject_id = 'user-id-123'`)).toEqual([{ request_id: r.requestId }]);
    expect(await sql(`SELECT count(*)::int AS n FROM lethe_outbox WHERE payload LIKE $1`, [`%${r.requestId}%`])).toEqual([{ n: 1 }]);
  });

  it('cancels a scheduled erasure for the subject; nothing changes, and only a scheduled request can be cancelled', async () => {
    const self = await as('member-user-id-456', 1);
    const r = await self.forgetUser({ userId: 'member-user-id-456', reason: REASON, idempotencyKey: 'self-456', requestedBy: '' });
    expect(r.scheduled).toBe(true);
    const stranger = await as('owner-user-id-2');
    expect(await status(stranger.cancelPrivacyRequest({ id: r.requestId, reason: '' }))).toEqual({ code: 'NOT_FOUND', details: 'Privacy request not found' });
    const cancelled = await self.cancelPrivacyRequest({ id: r.requestId, reason: 'changed my mind' });
    expect(cancelled.request?.state).toBe(RequestState.REQUEST_STATE_CANCELLED);
    expect(await status(self.cancelPrivacyRequest({ id: r.requestId, reason: '' }))).toEqual({
      code: 'FAILED_PRECONDITION',
      details: 'Only a scheduled request can be cancelled; this one is cancelled',
    });
    await new Promise((resolve) => setTimeout(resolve, 6_000)); // past the grace period
    expect(await emailOf('member-user-id-456')).toBe('member@example.com');
    expect(await sql(`SELECT event_type FROM audit_log WHERE target_id = 'member-user-id-456' ORDER BY id`)).toEqual([
      { event_type: 'user_erasure_scheduled' },
      { event_type: 'user_erasure_cancelled' },
    ]);
  });

  it('never schedules the erasure of a platform owner', async () => {
    const owner = await as('platform-owner-id');
    expect(await status(owner.forgetUser({ userId: 'platform-owner-id', reason: REASON, idempotencyKey: 'self-po', requestedBy: '' }))).toEqual({
      code: 'PERMISSION_DENIED',
      details: 'Platform owners cannot be anonymized',
    });
  });

  it('extends a due date once by up to two months, for platform owners only, keeping the original', async () => {
    const member = await as('member-user-id-456');
    const stored = await member.storeExport({ userId: 'member-user-id-456', reason: '', idempotencyKey: 'extend-me', requestedBy: '' });
    const before = (await member.getPrivacyRequest({ id: stored.requestId })).request;
    expect(await status(member.extendPrivacyRequest({ id: stored.requestId, months: 1, reason: 'complex' }))).toEqual({
      code: 'PERMISSION_DENIED',
      details: "Only platform owners may extend a request's due date",
    });
    const platform = await as('platform-owner-id');
    expect(await status(platform.extendPrivacyRequest({ id: stored.requestId, months: 3, reason: 'complex' }))).toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await status(platform.extendPrivacyRequest({ id: stored.requestId, months: 2, reason: '' }))).toEqual({
      code: 'INVALID_ARGUMENT',
      details: 'reason is required',
    });
    // A completed request is answered: nothing to extend.
    expect(await status(platform.extendPrivacyRequest({ id: stored.requestId, months: 2, reason: 'complex' }))).toEqual({
      code: 'FAILED_PRECONDITION',
      details: 'Only an open request can be extended; this one is completed',
    });

    const self = await as('owner-user-id-1');
    const open = await self.forgetUser({ userId: 'owner-user-id-1', reason: REASON, idempotencyKey: 'self-owner-1', requestedBy: '' });
    const extended = (await platform.extendPrivacyRequest({ id: open.requestId, months: 2, reason: 'several systems hold data' })).request;
    const received = new Date(extended?.receivedAt ?? 0);
    const threeMonths = new Date(received);
    threeMonths.setUTCMonth(threeMonths.getUTCMonth() + 3);
    if (received.getUTCDate() === threeMonths.getUTCDate()) expect(extended?.dueAt?.toISOString()).toBe(threeMonths.toISOString());
    expect(extended?.originalDueAt?.getTime()).toBeLessThan(extended?.dueAt?.getTime() ?? 0);
    expect(extended?.extensionReason).toBe('several systems hold data');
    expect(await status(platform.extendPrivacyRequest({ id: open.requestId, months: 1, reason: 'more' }))).toEqual({
      code: 'FAILED_PRECONDITION',
      details: 'The due date was already extended once; GDPR Art. 12(3) allows one extension of at most two months',
    });
    expect(before?.originalDueAt).toBeUndefined();

    // Due within a week: none of these (each is due in a month or more).
    const soon = await platform.listPrivacyRequests({
      subjectId: '',
      state: 0,
      overdueOnly: false,
      pageSize: 50,
      pageToken: '',
      dueBefore: new Date(Date.now() + 7 * 86_400_000),
    });
    expect(soon.requests).toEqual([]);
    const later = await platform.listPrivacyRequests({
      subjectId: '',
      state: 0,
      overdueOnly: false,
      pageSize: 50,
      pageToken: '',
      dueBefore: new Date(Date.now() + 100 * 86_400_000),
    });
    expect(later.requests.map((x) => x.id)).toContain(open.requestId);
    expect(later.requests.map((x) => x.id)).not.toContain(stored.requestId); // completed: not open
  });
});
