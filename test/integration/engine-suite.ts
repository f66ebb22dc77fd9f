import { createHash, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from '../../src/errors.js';
import { type ExportEvent, FORGET_MESSAGE, type PrivacyEngine } from '../../src/privacy/engine.js';
import type { Principal } from '../../src/privacy/principal.js';
import type { Database } from '../../src/store/database.js';
import { ledger } from '../../src/store/ledger.js';
import { collectExport, demoEngine, engineOn, never } from '../support/engine-fixture.js';
import { DOCUMENT_KEYS, EXPECTED_NEWEST_LOGIN, EXPECTED_USER_123 } from '../support/expected-export.js';
import { engineDataMapTests } from './engine-suite-data-maps.js';

const user = (id: string): Principal => ({ id, role: 'user' });

/**
 * The engine's behaviour on a real database. Runs against PostgreSQL and against embedded
 * PGlite: the same data map and the same results on both. Exports, forgets and the ledger here;
 * data maps of other schemas in engine-suite-data-maps.ts.
 */
export function engineSuite(name: string, open: () => Promise<Database>, close: () => Promise<void> = async () => undefined): void {
  const slug = name.replace(/[^A-Za-z0-9]+/g, '-');
  describe(`privacy engine on ${name}`, () => {
    let db: Database;
    let engine: PrivacyEngine;

    beforeAll(async () => {
      db = await open();
      engine = await demoEngine(db);
    });
    afterAll(async () => {
      await db?.close();
      await close();
    });

    it('exports user-id-123 as the reference document, with the full field set', async () => {
      const { doc, text, events } = await collectExport(engine.exportUser(user('user-id-123'), { userId: 'user-id-123', reason: '' }, never));
      expect(Object.keys(doc)).toEqual(DOCUMENT_KEYS);
      const { login_events: logins, ...rest } = doc as { login_events: Array<Record<string, unknown>> };
      expect(rest).toEqual(EXPECTED_USER_123);
      expect(logins).toHaveLength(50);
      expect(logins[0]).toEqual(EXPECTED_NEWEST_LOGIN);
      const newest50 = (await db.knex('login_events').where({ user_id: 'user-id-123' }).orderBy('timestamp', 'desc').limit(50).pluck('id')) as string[];
      expect(logins.map((l) => l.id)).toEqual(newest50);

      const trailer = events.at(-1);
      expect(trailer?.kind).toBe('trailer');
      if (trailer?.kind !== 'trailer') return;
      expect(trailer.sha256).toBe(createHash('sha256').update(text).digest('hex'));
      expect(Object.fromEntries(trailer.counts)).toEqual({ profile: 1, memberships: 2, login_events: 50, oauth_identities: 2, mfa_events: 3, passkeys: 1 });
      expect(trailer.totalRecords).toBe(59);
      const header = events[0];
      expect(header?.kind === 'header' && header.categories.find((c) => c.name === 'login_events')).toMatchObject({
        totalCount: 247,
        limit: 50,
        countKey: 'login_events_count',
      });
    });

    it('never exports secret columns', async () => {
      const { text } = await collectExport(engine.exportUser(user('user-id-123'), { userId: 'user-id-123', reason: '' }, never));
      for (const secret of [
        '$argon2id',
        'gho_demoAccessToken',
        'ghr_demoRefreshToken',
        'JBSWY3DPEHPK3PXP',
        'cred-demo-xyz',
        'demo-session-1',
        'demo-recovery-1',
      ]) {
        expect(text).not.toContain(secret);
      }
    });

    it('records each export in the ledger and the audit log', async () => {
      const before = await db
        .knex('audit_log')
        .where({ event_type: 'user_data_exported', target_id: 'member-user-id-456' })
        .count<{ count: number }[]>('* as count');
      const { events } = await collectExport(engine.exportUser(user('owner-user-id-1'), { userId: 'member-user-id-456', reason: 'Compliance audit' }, never));
      const header = events[0];
      if (header?.kind !== 'header') throw new Error('no header');
      const r = await engine.getRequest(user('owner-user-id-1'), header.requestId);
      expect(r).toMatchObject({
        type: 'export',
        subjectId: 'member-user-id-456',
        requester: 'owner-user-id-1',
        reason: 'Compliance audit',
        state: 'completed',
        overdue: false,
      });
      expect(r.completedAt).toBeInstanceOf(Date);
      const after = await db
        .knex('audit_log')
        .where({ event_type: 'user_data_exported', target_id: 'member-user-id-456' })
        .count<{ count: number }[]>('* as count');
      expect(Number(after[0]?.count) - Number(before[0]?.count)).toBe(1);
    });

    it('records an export its caller stopped, or stopped reading, as failed, and gives its connection back', async () => {
      const stalling = await engineOn(db, { exportStallTimeoutMs: 300 });
      const entry = async (requestId: string) =>
        db.knex('lethe_privacy_requests').where({ id: requestId }).first<{ state: string; error: string | null }>('state', 'error');
      const headerOf = async (events: AsyncIterator<ExportEvent>) => {
        const first = await events.next();
        if (first.done === true || first.value.kind !== 'header') throw new Error('no header');
        return first.value.requestId;
      };

      const cancelled = engine.exportUser(user('user-id-123'), { userId: 'user-id-123', reason: '' }, never)[Symbol.asyncIterator]();
      const cancelledId = await headerOf(cancelled);
      await cancelled.return?.(undefined);
      expect(await entry(cancelledId)).toEqual({ state: 'failed', error: 'The export was interrupted before it finished' });

      const stalled = stalling.exportUser(user('user-id-123'), { userId: 'user-id-123', reason: '' }, never)[Symbol.asyncIterator]();
      const stalledId = await headerOf(stalled);
      await new Promise((resolve) => setTimeout(resolve, 600));
      expect(await entry(stalledId)).toEqual({
        state: 'failed',
        error: 'The export was stopped: the caller read nothing for 0.3s; read the stream as it comes, or run the export again',
      });
      await expect(stalled.next()).rejects.toThrow('The export was stopped');

      // The connections were given back: on PGlite, the only one.
      const { doc } = await collectExport(engine.exportUser(user('user-id-123'), { userId: 'user-id-123', reason: '' }, never));
      expect(doc).toMatchObject({ user_id: 'user-id-123' });
    });

    it('refuses an export the rules do not allow, and a user that does not exist', async () => {
      await expect(collectExport(engine.exportUser(user('member-user-id-456'), { userId: 'user-id-123', reason: '' }, never))).rejects.toThrow(
        new PermissionDeniedError("You do not have permission to export this user's data"),
      );
      await expect(collectExport(engine.exportUser(user('platform-owner-id'), { userId: 'no-such-user', reason: '' }, never))).rejects.toThrow(
        new NotFoundError('User not found'),
      );
      await expect(collectExport(engine.exportUser(user('platform-owner-id'), { userId: '', reason: '' }, never))).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    describe('forget', () => {
      const reason = 'GDPR Right to be Forgotten';
      let first: Awaited<ReturnType<PrivacyEngine['forgetUser']>>;

      beforeAll(async () => {
        first = await engine.forgetUser(user('owner-user-id-2'), { userId: 'user-id-123', reason, idempotencyKey: `forget-123-${slug}` });
      });

      it('answers as the reference and reports the rows per table', () => {
        expect(first.message).toBe(FORGET_MESSAGE);
        expect(first.replayed).toBe(false);
        expect(first.rowsAffected).toEqual([
          { table: 'users', action: 'update', rows: 1 },
          { table: 'login_events', action: 'update', rows: 247 },
          { table: 'oauth_identities', action: 'delete', rows: 2 },
          { table: 'passkeys', action: 'delete', rows: 1 },
          { table: 'mfa_secrets', action: 'delete', rows: 1 },
          { table: 'mfa_recovery_codes', action: 'delete', rows: 4 },
          { table: 'sessions', action: 'delete', rows: 2 },
          { table: 'device_trust_tokens', action: 'delete', rows: 1 },
          // two demo entries plus the export's own entry written by the first test
          { table: 'audit_log', action: 'update', rows: expect.any(Number) as number },
        ]);
      });

      it('leaves the rows the anonymization table says', async () => {
        const k = db.knex;
        const u = (await k('users').where({ id: 'user-id-123' }).first()) as { email: string; password_hash: string | null; created_at: Date };
        expect(u.email).toMatch(/^anonymized-\d{13}@deleted\.local$/);
        expect(u.password_hash).toBeNull();
        expect(new Date(u.created_at).toISOString()).toBe('2024-06-15T10:00:00.000Z');

        const logins = (await k('login_events').where({ user_id: 'user-id-123' })) as Array<{
          ip_address: string;
          user_agent: string;
          provider: string;
          geo_city: string;
        }>;
        expect(logins).toHaveLength(247);
        expect(new Set(logins.map((l) => l.ip_address))).toEqual(new Set(['0.0.0.0']));
        expect(new Set(logins.map((l) => l.user_agent))).toEqual(new Set(['anonymized']));
        expect(logins.some((l) => l.provider === 'github')).toBe(true);

        for (const table of ['oauth_identities', 'passkeys', 'mfa_secrets', 'mfa_recovery_codes', 'sessions', 'device_trust_tokens']) {
          expect(await k(table).where({ user_id: 'user-id-123' }), table).toEqual([]);
        }
        expect(await k('memberships').where({ user_id: 'user-id-123' }).pluck('role')).toEqual(expect.arrayContaining(['admin', 'member']));
        expect(await k('mfa_events').where({ user_id: 'user-id-123' }).pluck('event_type')).toHaveLength(3);

        const audit = (await k('audit_log').where('actor_id', 'user-id-123').orWhere('target_id', 'user-id-123').orderBy('id')) as Array<{
          event_type: string;
          actor_id: string;
          ip_address: string | null;
          user_agent: string | null;
          details: unknown;
        }>;
        const old = audit.filter((a) => a.event_type !== 'user_anonymized');
        expect(old.length).toBeGreaterThanOrEqual(2);
        for (const a of old) {
          if (a.ip_address !== null) expect(a.ip_address).toBe('0.0.0.0');
          if (a.user_agent !== null) expect(a.user_agent).toBe('anonymized');
        }
        const entry = audit.filter((a) => a.event_type === 'user_anonymized');
        expect(entry).toHaveLength(1);
        expect(entry[0]).toMatchObject({ actor_id: 'owner-user-id-2' });
        const details = typeof entry[0]?.details === 'string' ? JSON.parse(entry[0].details) : entry[0]?.details;
        expect(details).toEqual({ reason });
        // Earlier entries keep their references only: the old email of the profile change is gone.
        const changed = old.find((a) => a.event_type === 'email_changed');
        expect(typeof changed?.details === 'string' ? JSON.parse(changed.details) : changed?.details).toEqual({});
        // Other users are untouched.
        expect(((await k('users').where({ id: 'member-user-id-456' }).first()) as { email: string }).email).toBe('member@example.com');
      });

      it('records the request in the ledger, due one calendar month after receipt', async () => {
        const r = await engine.getRequest(user('owner-user-id-2'), first.requestId);
        expect(r).toMatchObject({ type: 'forget', subjectId: 'user-id-123', requester: 'owner-user-id-2', reason, state: 'completed', overdue: false });
        const due = new Date(r.receivedAt);
        due.setUTCMonth(due.getUTCMonth() + 1);
        if (r.receivedAt.getUTCDate() === due.getUTCDate()) expect(r.dueAt.toISOString()).toBe(due.toISOString());
        expect(r.rowsAffected).toEqual(first.rowsAffected);
      });

      it('answers with the ledger entry as GetPrivacyRequest reads it, without reading it back', async () => {
        expect(first.written).toBeDefined();
        const read = await engine.getRequest(user('owner-user-id-2'), first.requestId);
        expect(await engine.forgetRequest(user('owner-user-id-2'), first)).toEqual(read);
        // Waiting for downstream services: the same entry, every service pending.
        const confirming = await engineOn(db, { expectedServices: ['orders', 'search'] });
        await db.knex('users').insert({ id: `waiting-${slug}`, email: `waiting-${slug}@example.com` });
        const waiting = await confirming.forgetUser(user('platform-owner-id'), {
          userId: `waiting-${slug}`,
          reason,
          idempotencyKey: `forget-waiting-${slug}`,
          requestedBy: 'console-user',
        });
        const answered = await confirming.forgetRequest(user('platform-owner-id'), waiting);
        expect(answered).toMatchObject({ state: 'anonymized', pending: ['orders', 'search'], requestedBy: 'console-user' });
        expect(answered).toEqual(await confirming.getRequest(user('platform-owner-id'), waiting.requestId));
      });

      it('replays a retried call with the same idempotency key and changes nothing', async () => {
        const email = ((await db.knex('users').where({ id: 'user-id-123' }).first()) as { email: string }).email;
        const again = await engine.forgetUser(user('owner-user-id-2'), { userId: 'user-id-123', reason, idempotencyKey: `forget-123-${slug}` });
        expect(again).toEqual({ ...first, replayed: true, written: undefined });
        expect(((await db.knex('users').where({ id: 'user-id-123' }).first()) as { email: string }).email).toBe(email);
      });

      it('forgets an anonymized user again without changing anything', async () => {
        const email = ((await db.knex('users').where({ id: 'user-id-123' }).first()) as { email: string }).email;
        const audits = await db.knex('audit_log').where({ event_type: 'user_anonymized', target_id: 'user-id-123' }).pluck('id');
        const again = await engine.forgetUser(user('platform-owner-id'), { userId: 'user-id-123', reason, idempotencyKey: `forget-123-again-${slug}` });
        expect(again).toMatchObject({ message: FORGET_MESSAGE, replayed: false, rowsAffected: [] });
        expect(again.requestId).not.toBe(first.requestId);
        expect(((await db.knex('users').where({ id: 'user-id-123' }).first()) as { email: string }).email).toBe(email);
        expect(await db.knex('audit_log').where({ event_type: 'user_anonymized', target_id: 'user-id-123' }).pluck('id')).toEqual(audits);
      });

      it('refuses an idempotency key reused for another subject', async () => {
        await expect(
          engine.forgetUser(user('owner-user-id-2'), { userId: 'member-user-id-456', reason, idempotencyKey: `forget-123-${slug}` }),
        ).rejects.toThrow(new FailedPreconditionError('idempotency_key was already used for a different request; use a new key'));
        expect(((await db.knex('users').where({ id: 'member-user-id-456' }).first()) as { email: string }).email).toBe('member@example.com');
      });

      it('lists the ledger by subject, state and visibility', async () => {
        const mine = await engine.listRequests(user('owner-user-id-2'), { overdueOnly: false, pageSize: 50 });
        expect(mine.every((r) => r.requester === 'owner-user-id-2' || r.subjectId === 'owner-user-id-2')).toBe(true);
        expect(mine.map((r) => r.id)).toContain(first.requestId);
        const all = await engine.listRequests(user('platform-owner-id'), { subjectId: 'user-id-123', state: 'completed', overdueOnly: false, pageSize: 50 });
        expect(all.length).toBeGreaterThanOrEqual(3);
        expect(all.every((r) => r.subjectId === 'user-id-123' && r.state === 'completed')).toBe(true);
        expect(await engine.listRequests(user('platform-owner-id'), { overdueOnly: true, pageSize: 50 })).toEqual([]);
        await expect(engine.getRequest(user('member-user-id-456'), first.requestId)).rejects.toThrow(new NotFoundError('Privacy request not found'));
      });
    });

    it('counts open requests overdue and due soon in one query (the deadline gauges)', async () => {
      const now = new Date('2100-01-01T00:00:00Z');
      const soon = new Date('2100-01-08T00:00:00Z');
      const before = await ledger.countOpenByDue(db.knex, now, soon);
      const request = (state: string, dueAt: string) => ({
        id: randomUUID(),
        type: 'export',
        subject_id: `due-${slug}`,
        requester: 'x',
        reason: '',
        state,
        received_at: new Date('2099-11-01T00:00:00Z'),
        due_at: new Date(dueAt),
      });
      await db
        .knex('lethe_privacy_requests')
        .insert([
          request('running', '2099-12-31T23:59:59Z'),
          request('scheduled', '2100-01-01T00:00:00Z'),
          request('anonymized', '2100-01-07T23:59:59Z'),
          request('scheduled', '2100-01-08T00:00:00Z'),
          request('completed', '2099-12-01T00:00:00Z'),
          request('cancelled', '2100-01-02T00:00:00Z'),
        ]);
      expect(await ledger.countOpenByDue(db.knex, now, soon)).toEqual({ overdue: before.overdue + 1, dueSoon: before.dueSoon + 2 });
    });

    engineDataMapTests(() => db, slug);
  });
}
