import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

/** Rectification, restriction and consent over the HTTP API: the same rules and messages as gRPC. */
describe('the HTTP API: rectification, restriction and consent', () => {
  let t: TestServer;
  let base: string;

  const call = async (method: string, path: string, as: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${await mintLocalToken(t.dataDir, as, 300)}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };

  beforeAll(async () => {
    t = await startTestServer({});
    base = `http://127.0.0.1:${t.server.httpPort ?? 0}`;
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('POST /api/privacy/rectify/:user_id changes the email, replays a repeated key, and refuses bad values with 400', async () => {
    const first = await call(
      'POST',
      '/api/privacy/rectify/user-id-123',
      'user-id-123',
      { changes: { email: 'http.user@example.org' } },
      { 'idempotency-key': 'http-rect-1' },
    );
    expect(first.status).toBe(200);
    expect(first.json).toMatchObject({ replayed: false, request: { type: 'rectify', state: 'completed', fields: ['email'] } });
    const again = await call(
      'POST',
      '/api/privacy/rectify/user-id-123',
      'user-id-123',
      { changes: { email: 'other@example.org' } },
      { 'idempotency-key': 'http-rect-1' },
    );
    expect(again.json).toMatchObject({ replayed: true, request: { id: (first.json.request as { id: string }).id } });
    expect(await call('POST', '/api/privacy/rectify/user-id-123', 'user-id-123', { changes: { email: 'nope' } })).toEqual({
      status: 400,
      json: { error: 'email: must be an email address (name@domain.tld)' },
    });
    expect(await call('POST', '/api/privacy/rectify/user-id-123', 'member-user-id-456', { changes: { email: 'x@example.org' } })).toEqual({
      status: 403,
      json: { error: "You must be an owner of organization 'acme-corp' to rectify this user's data" },
    });
  });

  it('restricts and lifts, records and withdraws consent, and lists the proof', async () => {
    const restricted = await call('POST', '/api/privacy/restrict/user-id-123', 'user-id-123', { purposes: ['profiling'], basis: 'objection' });
    expect(restricted.status).toBe(200);
    expect((restricted.json.purposes as unknown[])[2]).toEqual({ purpose: 'profiling', restricted: false, objected: true, consent: 'none' });
    const lifted = await call('POST', '/api/privacy/restrict/user-id-123/lift', 'user-id-123', { purposes: ['profiling'], basis: 'objection' });
    expect(lifted.json).toMatchObject({ request: { type: 'lift_restriction', purposes: ['profiling'], basis: 'objection' } });

    const given = await call('POST', '/api/privacy/consents/user-id-123', 'user-id-123', { purpose: 'marketing', text_version: 'v3', source: 'web-signup' });
    expect(given).toMatchObject({ status: 201, json: { already_given: false, consent: { purpose: 'marketing', text_version: 'v3' } } });
    const same = await call('POST', '/api/privacy/consents/user-id-123', 'user-id-123', { purpose: 'marketing', text_version: 'v3', source: 'web-signup' });
    expect(same).toMatchObject({ status: 200, json: { already_given: true } });
    const withdrawn = await call('POST', '/api/privacy/consents/user-id-123/withdraw', 'user-id-123', { source: 'settings' });
    expect(withdrawn.json).toMatchObject({ withdrawn: [{ purpose: 'marketing', withdrawn_source: 'settings' }] });
    const listed = await call('GET', '/api/privacy/consents/user-id-123', 'owner-user-id-2');
    expect(listed.json.consents).toMatchObject([{ purpose: 'marketing', text_version: 'v3', withdrawn_source: 'settings' }]);
    expect(await call('POST', '/api/privacy/consents/user-id-123', 'user-id-123', { purpose: 'ads', text_version: 'v1', source: 'web' })).toEqual({
      status: 400,
      json: { error: "unknown purpose 'ads': purposes are marketing, analytics, profiling" },
    });
  });
});
