import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError } from '../../src/errors.js';
import type { PrivacyEngine } from '../../src/privacy/engine.js';
import type { Principal } from '../../src/privacy/principal.js';
import type { Database } from '../../src/store/database.js';
import { collectExport, demoEngine, never } from '../support/engine-fixture.js';

const user = (id: string): Principal => ({ id, role: 'user' });
const platform: Principal = { id: 'lethe-operator', role: 'platform' };

/** Rejects with an error of this class and exactly this message. */
async function rejects(p: Promise<unknown>, type: new (...args: never[]) => Error, message: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(type);
  expect((err as Error).message).toBe(message);
}

/**
 * Rectification, restriction, objection and consent on a real database (PostgreSQL and PGlite):
 * what changes, what the ledger, the audit log and the outbox record, and what a forget leaves.
 */
export function rightsSuite(name: string, open: () => Promise<Database>, close: () => Promise<void> = async () => undefined): void {
  describe(`rights beyond access and erasure on ${name}`, () => {
    let db: Database;
    let engine: PrivacyEngine;
    let confirming: PrivacyEngine;

    beforeAll(async () => {
      db = await open();
      engine = await demoEngine(db);
      confirming = await demoEngine(db, { expectedServices: ['orders', 'search'] });
    });
    afterAll(async () => {
      await db?.close();
      await close();
    });

    describe('RectifyUser', () => {
      it('changes the email, and records field names but never the value', async () => {
        const r = await engine.rectifyUser(user('user-id-123'), {
          userId: 'user-id-123',
          changes: { email: 'new.address@example.org' },
          reason: 'moved provider',
          idempotencyKey: 'rectify-1',
        });
        expect(r.replayed).toBe(false);
        expect(r.request).toMatchObject({ type: 'rectify', state: 'completed', subjectId: 'user-id-123', details: { fields: ['email'] } });
        expect(r.request?.rowsAffected).toEqual([{ table: 'users', action: 'update', rows: 1 }]);
        expect(await db.knex('users').where({ id: 'user-id-123' }).first('email')).toEqual({ email: 'new.address@example.org' });

        const audit = (await db.knex('audit_log').where({ event_type: 'user_rectified', target_id: 'user-id-123' }).first()) as { details: unknown };
        expect(audit.details).toEqual({ request_id: r.request?.id, fields: ['email'], reason: 'moved provider' });
        const outbox = (await db.knex('lethe_outbox').where({ subject: 'privacy.v1.change.rectified' }).pluck('payload')) as string[];
        expect(outbox).toHaveLength(1);
        expect(outbox[0]).not.toContain('new.address');
        expect(JSON.parse(outbox[0] ?? '{}')).toMatchObject({ data: { user_id: 'user-id-123', request_id: r.request?.id, fields: ['email'], version: 1 } });
        // No service waits for the values, so none are kept.
        expect(await db.knex('lethe_rectifications').where({ request_id: r.request?.id }).first('pending_values')).toEqual({ pending_values: null });

        const again = await engine.rectifyUser(user('user-id-123'), {
          userId: 'user-id-123',
          changes: { email: 'other@example.org' },
          reason: '',
          idempotencyKey: 'rectify-1',
        });
        expect(again).toMatchObject({ replayed: true, request: { id: r.request?.id } });
        expect(await db.knex('users').where({ id: 'user-id-123' }).first('email')).toEqual({ email: 'new.address@example.org' });
      });

      it('refuses unknown fields and values that fail the rules, without echoing the value', async () => {
        let n = 0;
        const rectify = (changes: Record<string, string>) =>
          engine.rectifyUser(user('user-id-123'), { userId: 'user-id-123', changes, reason: '', idempotencyKey: `bad-${(n += 1)}` });
        await rejects(rectify({ phone: '+44 20 7946 0000' }), InvalidArgumentError, "unknown field 'phone': rectifiable fields are email");
        await rejects(rectify({ email: 'not-an-address' }), InvalidArgumentError, 'email: must be an email address (name@domain.tld)');
        await rejects(rectify({ email: 'a\u0000b@example.org' }), InvalidArgumentError, 'email: must not contain control characters');
        await rejects(rectify({}), InvalidArgumentError, 'changes is required: give at least one field and its new value');
        await rejects(rectify({ email: `${'x'.repeat(250)}@example.org` }), InvalidArgumentError, 'email: must be at most 254 characters');
      });

      it('refuses an email another user has, and changes nothing', async () => {
        await rejects(
          engine.rectifyUser(user('member-user-id-456'), {
            userId: 'member-user-id-456',
            changes: { email: 'OWNER1@example.com' },
            reason: '',
            idempotencyKey: 'dup-email',
          }),
          FailedPreconditionError,
          'The new value of email is already used by another record (users); nothing was changed',
        );
        expect(await db.knex('lethe_privacy_requests').where({ idempotency_key: 'dup-email' }).first()).toBeUndefined();
      });

      it('lets an owner of every organization of the subject rectify, and names the one missing', async () => {
        await rejects(
          engine.rectifyUser(user('owner-user-id-1'), { userId: 'user-id-123', changes: { email: 'x@example.org' }, reason: '', idempotencyKey: 'owner-1' }),
          PermissionDeniedError,
          "You must be an owner of organization 'dev-team' to rectify this user's data",
        );
        await rejects(
          engine.rectifyUser(user('member-user-id-456'), {
            userId: 'user-id-123',
            changes: { email: 'x@example.org' },
            reason: '',
            idempotencyKey: 'member-1',
          }),
          PermissionDeniedError,
          "You must be an owner of organization 'acme-corp' to rectify this user's data",
        );
        const ok = await engine.rectifyUser(user('owner-user-id-2'), {
          userId: 'member-user-id-456',
          changes: { email: 'm456@example.org' },
          reason: 'typo',
          idempotencyKey: 'owner-2',
        });
        expect(ok.request?.state).toBe('completed');
      });

      it('keeps the values for the services that must apply them, until each has confirmed', async () => {
        const r = await confirming.rectifyUser(platform, {
          userId: 'owner-user-id-1',
          changes: { email: 'first.owner@example.org' },
          reason: '',
          idempotencyKey: 'wait-1',
        });
        const id = r.request?.id ?? '';
        expect(r.request).toMatchObject({ state: 'applied', pending: ['orders', 'search'] });
        expect(await confirming.pendingValues(id, 'orders')).toEqual({
          kind: 'values',
          subjectId: 'owner-user-id-1',
          values: [['email', 'first.owner@example.org']],
        });
        expect(await confirming.pendingValues(id, 'billing')).toEqual({ kind: 'gone', reason: 'billing is not an expected service' });

        const receipt = async (service: string, status: 'applied' | 'skipped' | 'failed') =>
          (
            await confirming.recordConfirmations([
              {
                requestId: id,
                service,
                status,
                rowsAffected: [],
                purgedAt: new Date(),
                error: status === 'failed' ? 'SQLSTATE 23505' : undefined,
                change: true,
              },
            ])
          )[0];
        expect(await receipt('orders', 'applied')).toBe('recorded');
        expect(await receipt('search', 'skipped')).toBe('completed');
        expect(await confirming.getRequest(platform, id)).toMatchObject({
          state: 'completed',
          confirmations: [
            { service: 'orders', status: 'applied' },
            { service: 'search', status: 'skipped' },
          ],
        });
        expect(await confirming.pendingValues(id, 'orders')).toEqual({ kind: 'gone', reason: 'the rectification is settled' });

        const failing = await confirming.rectifyUser(platform, {
          userId: 'owner-user-id-1',
          changes: { email: 'second.owner@example.org' },
          reason: '',
          idempotencyKey: 'wait-2',
        });
        const fid = failing.request?.id ?? '';
        await confirming.recordConfirmations([
          { requestId: fid, service: 'search', status: 'failed', rowsAffected: [], purgedAt: new Date(), error: 'SQLSTATE 23505', change: true },
        ]);
        expect(await confirming.getRequest(platform, fid)).toMatchObject({ state: 'failed', error: 'search could not apply the change: SQLSTATE 23505' });
        expect(await db.knex('lethe_rectifications').where({ request_id: fid }).first('pending_values')).toEqual({ pending_values: null });
      });
    });

    describe('restriction, objection and consent', () => {
      it('restricts and lifts per purpose, with who and when, and says what now applies', async () => {
        const r = await engine.restrictProcessing(user('member-user-id-456'), {
          userId: 'member-user-id-456',
          purposes: ['marketing', 'profiling'],
          basis: 'restriction',
          reason: 'accuracy contested',
          idempotencyKey: 'restrict-1',
        });
        expect(r.request).toMatchObject({ type: 'restrict', state: 'completed', details: { purposes: ['marketing', 'profiling'], basis: 'restriction' } });
        expect(r.purposes).toEqual([
          { purpose: 'marketing', restricted: true, objected: false, consent: 'none' },
          { purpose: 'analytics', restricted: false, objected: false, consent: 'none' },
          { purpose: 'profiling', restricted: true, objected: false, consent: 'none' },
        ]);
        const objected = await engine.restrictProcessing(user('member-user-id-456'), {
          userId: 'member-user-id-456',
          purposes: ['analytics'],
          basis: 'objection',
          reason: '',
          idempotencyKey: 'object-1',
        });
        expect(objected.purposes[1]).toEqual({ purpose: 'analytics', restricted: false, objected: true, consent: 'none' });
        const lifted = await engine.liftRestriction(platform, {
          userId: 'member-user-id-456',
          purposes: ['marketing'],
          basis: 'restriction',
          reason: '',
          idempotencyKey: 'lift-1',
        });
        expect(lifted.purposes[0]).toEqual({ purpose: 'marketing', restricted: false, objected: false, consent: 'none' });
        const rows = (await db.knex('lethe_processing_limits').where({ subject_id: 'member-user-id-456' }).orderBy(['since', 'purpose'])) as Array<
          Record<string, unknown>
        >;
        expect(rows.map((x) => [x.purpose, x.basis, x.requested_by, x.lifted_by])).toEqual([
          ['marketing', 'restriction', 'member-user-id-456', 'lethe-operator'],
          ['profiling', 'restriction', 'member-user-id-456', null],
          ['analytics', 'objection', 'member-user-id-456', null],
        ]);
        const events = (await db.knex('lethe_outbox').where({ subject: 'privacy.v1.change.processing' }).pluck('payload')) as string[];
        const versions = events
          .map((e) => (JSON.parse(e) as { data: { user_id: string; version: number } }).data)
          .filter((d) => d.user_id === 'member-user-id-456');
        // Version 1 was the rectification above: one sequence per subject orders all its changes.
        expect(versions.map((d) => d.version)).toEqual([2, 3, 4]);
      });

      it('refuses unknown purposes, and anyone but the person or a platform principal', async () => {
        await rejects(
          engine.restrictProcessing(user('user-id-123'), {
            userId: 'user-id-123',
            purposes: ['newsletters'],
            basis: 'restriction',
            reason: '',
            idempotencyKey: 'bad-purpose',
          }),
          InvalidArgumentError,
          "unknown purpose 'newsletters': purposes are marketing, analytics, profiling",
        );
        await rejects(
          engine.restrictProcessing(user('owner-user-id-2'), {
            userId: 'user-id-123',
            purposes: ['marketing'],
            basis: 'restriction',
            reason: '',
            idempotencyKey: 'org-owner',
          }),
          PermissionDeniedError,
          "Only the person or a platform principal may change this user's processing choices and consents",
        );
        await rejects(
          engine.recordConsent(user('owner-user-id-2'), { userId: 'user-id-123', purpose: 'marketing', textVersion: 'v1', textSha256: '', source: 'web' }),
          PermissionDeniedError,
          "Only the person or a platform principal may change this user's processing choices and consents",
        );
        await rejects(
          engine.recordConsent(platform, { userId: 'user-id-123', purpose: 'marketing', textVersion: 'v1', textSha256: '', source: 'Web Signup!' }),
          InvalidArgumentError,
          'source is required: 1 to 64 of a-z, 0-9, . _ : / - (where the choice was made, e.g. web-signup)',
        );
      });

      it('records consent with the text version, supersedes it, withdraws all in one call, and lists the proof', async () => {
        const sha = 'ab'.repeat(32);
        const first = await engine.recordConsent(platform, {
          userId: 'user-id-123',
          purpose: 'marketing',
          textVersion: 'v1',
          textSha256: sha,
          source: 'web-signup',
        });
        expect(first).toMatchObject({
          alreadyGiven: false,
          consent: { purpose: 'marketing', textVersion: 'v1', textSha256: sha, source: 'web-signup', givenBy: 'lethe-operator' },
        });
        const same = await engine.recordConsent(platform, {
          userId: 'user-id-123',
          purpose: 'marketing',
          textVersion: 'v1',
          textSha256: sha,
          source: 'web-signup',
        });
        expect(same).toMatchObject({ alreadyGiven: true, consent: { id: first.consent.id } });
        const v2 = await engine.recordConsent(user('user-id-123'), {
          userId: 'user-id-123',
          purpose: 'marketing',
          textVersion: 'v2',
          textSha256: '',
          source: 'settings',
        });
        await engine.recordConsent(user('user-id-123'), { userId: 'user-id-123', purpose: 'analytics', textVersion: 'v1', textSha256: '', source: 'settings' });
        expect(v2.purposes.map((p) => p.consent)).toEqual(['given', 'none', 'none']);

        const w = await engine.withdrawConsent(user('user-id-123'), { userId: 'user-id-123', purposes: [], source: 'settings', reason: '' });
        expect(w.request).toMatchObject({ type: 'withdraw_consent', details: { purposes: ['analytics', 'marketing'] } });
        expect(w.withdrawn.map((c) => [c.purpose, c.textVersion, c.withdrawnSource])).toEqual([
          ['analytics', 'v1', 'settings'],
          ['marketing', 'v2', 'settings'],
        ]);
        expect(w.purposes.map((p) => p.consent)).toEqual(['withdrawn', 'withdrawn', 'none']);
        const nothing = await engine.withdrawConsent(user('user-id-123'), { userId: 'user-id-123', purposes: ['marketing'], source: 'settings', reason: '' });
        expect(nothing).toMatchObject({ request: undefined, withdrawn: [] });

        const list = await engine.listConsents(user('owner-user-id-2'), { userId: 'user-id-123' });
        expect(list.consents.map((c) => [c.purpose, c.textVersion, c.withdrawnSource])).toEqual([
          ['marketing', 'v1', 'superseded'],
          ['marketing', 'v2', 'settings'],
          ['analytics', 'v1', 'settings'],
        ]);
      });

      it('puts consents and restrictions in the export, and leaves them out for a person without any', async () => {
        const { doc } = await collectExport(engine.exportUser(platform, { userId: 'user-id-123', reason: '' }, never));
        expect((doc.consents as Array<Record<string, unknown>>).map((c) => [c.purpose, c.text_version, c.withdrawn_source])).toEqual([
          ['marketing', 'v1', 'superseded'],
          ['marketing', 'v2', 'settings'],
          ['analytics', 'v1', 'settings'],
        ]);
        expect(doc).not.toHaveProperty('processing_restrictions');
        const { doc: member } = await collectExport(engine.exportUser(platform, { userId: 'member-user-id-456', reason: '' }, never));
        expect((member.processing_restrictions as Array<Record<string, unknown>>).map((x) => [x.purpose, x.basis, x.lifted_by])).toEqual([
          ['marketing', 'restriction', 'lethe-operator'],
          ['profiling', 'restriction', null],
          ['analytics', 'objection', null],
        ]);
        const { doc: owner } = await collectExport(engine.exportUser(platform, { userId: 'owner-user-id-2', reason: '' }, never));
        expect(Object.keys(owner)).not.toContain('consents');
        expect(Object.keys(owner)).not.toContain('processing_restrictions');
      });

      it('after a forget: consents kept as proof but withdrawn, restrictions gone, and no further change accepted', async () => {
        await engine.recordConsent(platform, { userId: 'member-user-id-456', purpose: 'marketing', textVersion: 'v9', textSha256: '', source: 'web' });
        await engine.forgetUser(platform, { userId: 'member-user-id-456', reason: 'GDPR', idempotencyKey: 'forget-456' });
        expect(await db.knex('lethe_processing_limits').where({ subject_id: 'member-user-id-456' })).toEqual([]);
        expect(await db.knex('lethe_consents').where({ subject_id: 'member-user-id-456' }).select('text_version', 'withdrawn_source', 'withdrawn_by')).toEqual([
          { text_version: 'v9', withdrawn_source: 'erasure', withdrawn_by: 'lethe-operator' },
        ]);
        const erased = 'User data has been anonymized; it can no longer be rectified or have processing choices changed';
        await rejects(
          engine.rectifyUser(platform, { userId: 'member-user-id-456', changes: { email: 'back@example.org' }, reason: '', idempotencyKey: 'after-forget' }),
          FailedPreconditionError,
          erased,
        );
        await rejects(
          engine.restrictProcessing(platform, {
            userId: 'member-user-id-456',
            purposes: ['marketing'],
            basis: 'restriction',
            reason: '',
            idempotencyKey: 'after-forget-2',
          }),
          FailedPreconditionError,
          erased,
        );
        await rejects(
          engine.recordConsent(platform, { userId: 'member-user-id-456', purpose: 'marketing', textVersion: 'v10', textSha256: '', source: 'web' }),
          FailedPreconditionError,
          erased,
        );
      });
    });
  });
}
