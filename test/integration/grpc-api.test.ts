import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SignJWT, generateKeyPair, importJWK } from 'jose';
import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localKeyPath } from '../../src/auth/local-key.js';
import { receiveExport } from '../../src/client/export-receiver.js';
import type { PrivacyClient } from '../../src/client/privacy-client.js';
import { RequestState, RequestType } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { FORGET_MESSAGE } from '../../src/privacy/engine.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { status } from '../support/grpc-status.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

const bin = requirePostgres();
const REASON = 'GDPR Right to be Forgotten';
let keySeq = 0;
const key = () => `test-key-${++keySeq}`;

async function exportStatus(client: PrivacyClient, userId: string) {
  return status(receiveExport(client.exportUser({ userId, reason: '' }), () => undefined));
}

describe.runIf(bin !== undefined)('PrivacyService over gRPC on PostgreSQL', () => {
  let cluster: PostgresCluster;
  let url: string;
  let t: TestServer;
  const as = (id: string) => t.clientAs(id);

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    url = await cluster.createDatabase();
    t = await startTestServer({ DATABASE_URL: url, LETHE_PLATFORM_PRINCIPALS: 'privacy-bot' });
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query(`INSERT INTO users (id, email) VALUES ('lonely-user', 'lonely@example.com')`);
    await c.end();
  });
  afterAll(async () => {
    await t?.stop();
    await cluster?.destroy();
  });

  describe('export authorization (the reference rules)', () => {
    it.each([
      ['user-id-123', 'user-id-123', 'OK', ''],
      ['owner-user-id-1', 'member-user-id-456', 'OK', ''],
      ['owner-user-id-1', 'user-id-123', 'OK', ''],
      ['platform-owner-id', 'user-id-123', 'OK', ''],
      ['platform-owner-id', 'owner-user-id-2', 'OK', ''],
      ['privacy-bot', 'member-user-id-456', 'OK', ''],
      ['member-user-id-456', 'user-id-123', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['user-id-123', 'member-user-id-456', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['owner-user-id-1', 'platform-owner-id', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['untrusted-bot', 'member-user-id-456', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['platform-owner-id', 'no-such-user', 'NOT_FOUND', 'User not found'],
      ['no-such-user', 'no-such-user', 'NOT_FOUND', 'User not found'],
      // Who may not act on a subject learns nothing about whether it exists.
      ['owner-user-id-1', 'no-such-user', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['untrusted-bot', 'no-such-user', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
    ])('%s exporting %s → %s', async (actor, subject, code, details) => {
      expect(await exportStatus(await as(actor), subject)).toEqual({ code, details });
    });

    it('streams many rows per message and a verifiable trailer', async () => {
      const messages: number[] = [];
      const client = await as('user-id-123');
      const stream = client.exportUser({ userId: 'user-id-123', reason: '' });
      async function* counting() {
        for await (const m of stream) {
          if (m.part?.$case === 'batch') messages.push(m.part.value.records.length);
          yield m;
        }
      }
      const chunks: string[] = [];
      const r = await receiveExport(counting(), (c) => void chunks.push(c));
      expect(r.records).toBe(59);
      expect(messages.some((n) => n === 50)).toBe(true);
      const doc = JSON.parse(chunks.join('')) as { email: string; login_events_count: number };
      expect(doc).toMatchObject({ email: 'user@example.com', login_events_count: 247 });
    });
  });

  describe('forget authorization (the reference rules)', () => {
    it.each([
      ['owner-user-id-1', 'user-id-123', "You must be an owner of organization 'dev-team' to anonymize this user"],
      ['member-user-id-456', 'owner-user-id-1', "You must be an owner of organization 'acme-corp' to anonymize this user"],
      ['platform-owner-id', 'platform-owner-id', 'Platform owners cannot be anonymized'],
      ['owner-user-id-2', 'platform-owner-id', 'Platform owners cannot be anonymized'],
      ['privacy-bot', 'platform-owner-id', 'Platform owners cannot be anonymized'],
      ['untrusted-bot', 'member-user-id-456', "You must be an owner of organization 'acme-corp' to anonymize this user"],
    ])('%s forgetting %s is refused', async (actor, subject, details) => {
      const client = await as(actor);
      expect(await status(client.forgetUser({ userId: subject, reason: REASON, idempotencyKey: key() }))).toEqual({ code: 'PERMISSION_DENIED', details });
    });

    it('schedules a user’s own erasure instead of refusing it (carried out after the grace period)', async () => {
      const self = await as('user-id-123');
      const r = await self.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: key(), requestedBy: '' });
      expect(r).toMatchObject({ success: true, scheduled: true, rowsAffected: [] });
      expect((r.scheduledFor?.getTime() ?? 0) - Date.now()).toBeGreaterThan(6 * 86_400_000);
      expect((await self.cancelPrivacyRequest({ id: r.requestId, reason: '' })).request?.requestedBy).toBe('');
    });

    it('refuses an unknown user with NOT_FOUND, and tells a caller without the right nothing about existence', async () => {
      const client = await as('platform-owner-id');
      expect(await status(client.forgetUser({ userId: 'no-such-user', reason: REASON, idempotencyKey: key() }))).toEqual({
        code: 'NOT_FOUND',
        details: 'User not found',
      });
      const owner = await as('owner-user-id-1');
      const denied = { code: 'PERMISSION_DENIED', details: 'You do not have permission to anonymize this user' };
      expect(await status(owner.forgetUser({ userId: 'no-such-user', reason: REASON, idempotencyKey: key() }))).toEqual(denied);
      // The same answer as for an existing user who belongs to no organization.
      expect(await status(owner.forgetUser({ userId: 'lonely-user', reason: REASON, idempotencyKey: key() }))).toEqual(denied);
    });

    it('lets an owner of all the member’s organizations forget them', async () => {
      const r = await (await as('owner-user-id-1')).forgetUser({ userId: 'member-user-id-456', reason: REASON, idempotencyKey: key() });
      expect(r).toMatchObject({ success: true, message: FORGET_MESSAGE, userId: 'member-user-id-456', replayed: false });
      expect(r.rowsAffected).toContainEqual({ table: 'users', action: 'update', rows: 1 });
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      const { rows } = await c.query<{ email: string; password_hash: string | null }>('SELECT email, password_hash FROM users WHERE id = $1', [
        'member-user-id-456',
      ]);
      await c.end();
      expect(rows[0]?.email).toMatch(/^anonymized-\d+@deleted\.local$/);
      expect(rows[0]?.password_hash).toBeNull();
    });

    it('lets an owner in every organization forget user-id-123, and the ledger shows it', async () => {
      const client = await as('owner-user-id-2');
      const k = key();
      const r = await client.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: k });
      expect(r).toMatchObject({ success: true, message: FORGET_MESSAGE, userId: 'user-id-123' });
      const again = await client.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: k });
      expect(again).toEqual({ ...r, replayed: true });

      const { request } = await client.getPrivacyRequest({ id: r.requestId });
      expect(request).toMatchObject({
        id: r.requestId,
        type: RequestType.REQUEST_TYPE_FORGET,
        subjectId: 'user-id-123',
        requester: 'owner-user-id-2',
        reason: REASON,
        state: RequestState.REQUEST_STATE_COMPLETED,
        overdue: false,
        error: '',
      });
      const list = await client.listPrivacyRequests({
        subjectId: 'user-id-123',
        state: RequestState.REQUEST_STATE_UNSPECIFIED,
        overdueOnly: false,
        pageSize: 0,
        pageToken: '',
      });
      expect(list.requests.map((q) => q.id)).toContain(r.requestId);
    });

    it('lets a platform owner forget an organization owner', async () => {
      const r = await (await as('platform-owner-id')).forgetUser({ userId: 'owner-user-id-1', reason: REASON, idempotencyKey: key() });
      expect(r.success).toBe(true);
    });
  });

  describe('the ledger', () => {
    it('pages through requests with a token and filters overdue ones', async () => {
      const client = await as('platform-owner-id');
      const first = await client.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: false, pageSize: 2, pageToken: '' });
      expect(first.requests).toHaveLength(2);
      expect(first.nextPageToken).not.toBe('');
      const second = await client.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: false, pageSize: 2, pageToken: first.nextPageToken });
      expect(second.requests.map((r) => r.id)).not.toContain(first.requests[0]?.id);
      const overdue = await client.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: true, pageSize: 10, pageToken: '' });
      expect(overdue.requests).toEqual([]);
      expect(await status(client.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: false, pageSize: 10, pageToken: 'garbage' }))).toEqual({
        code: 'INVALID_ARGUMENT',
        details: 'page_token is not valid',
      });
      // The forgery: the old unsigned token format with a date outside PostgreSQL's range.
      const outOfRange = Buffer.from(JSON.stringify(['+275760-09-13T00:00:00.000Z', '00000000-0000-4000-8000-000000000000'])).toString('base64url');
      const [version, payload, mac] = first.nextPageToken.split('.');
      const altered = `${version}.${Buffer.from(
        Buffer.from(payload ?? '', 'base64url')
          .toString()
          .replace(/\d{4}-/, '2999-'),
      ).toString('base64url')}.${mac}`;
      for (const pageToken of [outOfRange, altered, `${first.nextPageToken}x`, `v1.${outOfRange}.AAAAAAAAAAAAAAAAAAAAAA`]) {
        expect(await status(client.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: false, pageSize: 10, pageToken }))).toEqual({
          code: 'INVALID_ARGUMENT',
          details: 'page_token is not valid',
        });
      }
      expect(await status(client.getPrivacyRequest({ id: 'not-a-uuid' }))).toEqual({
        code: 'INVALID_ARGUMENT',
        details: 'id must be a privacy request id (a UUID)',
      });
      expect(await status(client.getPrivacyRequest({ id: '00000000-0000-4000-8000-000000000000' }))).toEqual({
        code: 'NOT_FOUND',
        details: 'Privacy request not found',
      });
    });
  });

  describe('bad input gets INVALID_ARGUMENT and never leaks the value', () => {
    const long = 'x'.repeat(257);
    it.each([
      ['empty user_id', { userId: '', reason: REASON, idempotencyKey: 'k1' }, 'user_id is required'],
      ['oversized user_id', { userId: long, reason: REASON, idempotencyKey: 'k2' }, 'user_id must be at most 256 bytes'],
      ['malformed user_id', { userId: 'jane doe@example.com', reason: REASON, idempotencyKey: 'k3' }, 'user_id must be printable ASCII with no spaces'],
      ['empty reason', { userId: 'user-id-123', reason: '', idempotencyKey: 'k4' }, 'reason is required'],
      ['oversized reason', { userId: 'user-id-123', reason: 'é'.repeat(129), idempotencyKey: 'k5' }, 'reason must be at most 256 bytes'],
      [
        'control characters in reason',
        { userId: 'user-id-123', reason: 'jane@example.com\u0000', idempotencyKey: 'k6' },
        'reason must not contain control characters',
      ],
      ['empty idempotency key', { userId: 'user-id-123', reason: REASON, idempotencyKey: '' }, 'idempotency_key is required'],
      ['oversized idempotency key', { userId: 'user-id-123', reason: REASON, idempotencyKey: long }, 'idempotency_key must be at most 256 bytes'],
    ])('%s', async (_, request, details) => {
      expect(await status((await as('platform-owner-id')).forgetUser(request))).toEqual({ code: 'INVALID_ARGUMENT', details });
    });

    it('refuses a bad export subject the same way', async () => {
      expect(await exportStatus(await as('platform-owner-id'), 'jane doe')).toEqual({
        code: 'INVALID_ARGUMENT',
        details: 'user_id must be printable ASCII with no spaces',
      });
    });
  });

  describe('authentication is always on', () => {
    const localSigner = async () => {
      const jwk = JSON.parse(readFileSync(localKeyPath(t.dataDir), 'utf8')) as Record<string, string>;
      return importJWK(jwk, 'ES256');
    };
    const forgetWith = (token: string) => status(t.clientWithToken(token).forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: key() }));
    const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');

    it('refuses a call without a token', async () => {
      const channel = createChannel(t.address);
      const { PrivacyServiceDefinition } = await import('../../src/gen/lethe/privacy/v1/privacy.js');
      const bare = createClient(PrivacyServiceDefinition, channel);
      expect(await status(bare.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: key() }))).toEqual({
        code: 'UNAUTHENTICATED',
        details: 'Missing bearer token: send `authorization: Bearer <JWT>` (gRPC metadata or HTTP header)',
      });
      channel.close();
    });

    it('refuses an unsigned token (alg none)', async () => {
      const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ sub: 'platform-owner-id', iss: 'lethe-local', aud: 'lethe', exp: Math.floor(Date.now() / 1000) + 60 })}.`;
      expect(await forgetWith(none)).toEqual({ code: 'UNAUTHENTICATED', details: 'Token algorithm is not accepted' });
    });

    it('refuses an expired token', async () => {
      const token = await new SignJWT({})
        .setProtectedHeader({ alg: 'ES256' })
        .setSubject('platform-owner-id')
        .setIssuer('lethe-local')
        .setAudience('lethe')
        .setIssuedAt(1_700_000_000)
        .setExpirationTime(1_700_000_060)
        .sign(await localSigner());
      expect(await forgetWith(token)).toEqual({ code: 'UNAUTHENTICATED', details: 'Token has expired' });
    });

    it('refuses a token signed by another key', async () => {
      const { privateKey } = await generateKeyPair('ES256');
      const token = await new SignJWT({})
        .setProtectedHeader({ alg: 'ES256' })
        .setSubject('platform-owner-id')
        .setIssuer('lethe-local')
        .setAudience('lethe')
        .setExpirationTime('1m')
        .sign(privateKey);
      expect(await forgetWith(token)).toEqual({ code: 'UNAUTHENTICATED', details: 'Token signature is invalid' });
    });

    it.each([
      ['iss', 'someone-else', 'lethe'],
      ['aud', 'lethe-local', 'another-service'],
    ])('refuses a token with the wrong %s', async (claim, iss, aud) => {
      const token = await new SignJWT({})
        .setProtectedHeader({ alg: 'ES256' })
        .setSubject('platform-owner-id')
        .setIssuer(iss)
        .setAudience(aud)
        .setExpirationTime('1m')
        .sign(await localSigner());
      expect(await forgetWith(token)).toEqual({ code: 'UNAUTHENTICATED', details: `Token claim '${claim}' is not accepted` });
    });

    it('refuses garbage', async () => {
      expect(await forgetWith('not.a.jwt')).toEqual({ code: 'UNAUTHENTICATED', details: 'Token is malformed or not a signed JWT' });
    });
  });

  describe('health, reflection and a dead database', () => {
    it('serves the standard health service without a token', async () => {
      const channel = createChannel(t.address);
      const health = createClient(HealthDefinition, channel);
      expect(await health.check({ service: '' })).toEqual({ status: 1 });
      expect(await health.check({ service: 'lethe.privacy.v1.PrivacyService' })).toEqual({ status: 1 });
      channel.close();
    });

    it('answers server reflection, so grpcurl and buf curl need no proto files', async () => {
      const buf = join(process.cwd(), 'node_modules', '.bin', 'buf');
      // Asynchronously: the server runs in this process and must keep answering.
      const { stdout: out } = await promisify(execFile)(
        buf,
        ['curl', '--protocol', 'grpc', '--http2-prior-knowledge', '--list-methods', `http://${t.address}`],
        { encoding: 'utf8' },
      );
      expect(out.split('\n')).toEqual(
        expect.arrayContaining(['lethe.privacy.v1.PrivacyService/ExportUser', 'lethe.privacy.v1.PrivacyService/ForgetUser', 'grpc.health.v1.Health/Check']),
      );
    });

    it('answers UNAVAILABLE while the database is down and recovers by itself', async () => {
      const client = await as('platform-owner-id');
      await cluster.stop();
      try {
        expect(await status(client.forgetUser({ userId: 'owner-user-id-2', reason: REASON, idempotencyKey: key() }))).toEqual({
          code: 'UNAVAILABLE',
          details: 'The database is unavailable; retry later',
        });
        expect(await exportStatus(client, 'owner-user-id-2')).toEqual({ code: 'UNAVAILABLE', details: 'The database is unavailable; retry later' });
      } finally {
        await cluster.start();
      }
      expect(await exportStatus(client, 'owner-user-id-2')).toEqual({ code: 'OK', details: '' });
    });
  });
});
