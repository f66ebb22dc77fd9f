import { createHash } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { receiveExport } from '../../src/client/export-receiver.js';
import { DOCUMENT_KEYS, EXPECTED_NEWEST_LOGIN, EXPECTED_USER_123 } from '../support/expected-export.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

/**
 * The reference's HTTP API, served by `lethe serve` beside gRPC on the embedded demo: its
 * paths, documents, status codes and error bodies, with the same engine and rules.
 */

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly trailers: Record<string, string | undefined>;
  readonly text: string;
  readonly json: unknown;
}

describe('the reference HTTP API (embedded demo)', () => {
  let t: TestServer;
  let base: string;

  const call = async (
    method: string,
    path: string,
    opts: { as?: string; token?: string; body?: string; headers?: Record<string, string> } = {},
  ): Promise<Answer> => {
    const token = opts.token ?? (opts.as === undefined ? undefined : await mintLocalToken(t.dataDir, opts.as, 300));
    const headers: Record<string, string> = {
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      ...(opts.body === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(opts.body)) }),
      ...opts.headers,
    };
    return new Promise((resolve, reject) => {
      const req = httpRequest(`${base}${path}`, { method, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, trailers: res.trailers, text, json });
        });
      });
      req.on('error', reject);
      req.end(opts.body);
    });
  };

  beforeAll(async () => {
    t = await startTestServer({});
    base = `http://127.0.0.1:${t.server.httpPort ?? 0}`;
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('GET /api/privacy/export/:user_id answers the document lethe export writes, with its digest as a trailer', async () => {
    const r = await call('GET', '/api/privacy/export/user-id-123', { as: 'user-id-123' });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json; charset=utf-8');
    const doc = r.json as Record<string, unknown> & { login_events: unknown[] };
    expect(Object.keys(doc)).toEqual(DOCUMENT_KEYS);
    const { login_events: logins, ...rest } = doc;
    expect(rest).toEqual(EXPECTED_USER_123);
    expect(logins).toHaveLength(50);
    expect(logins[0]).toEqual(EXPECTED_NEWEST_LOGIN);
    expect(r.trailers['x-lethe-sha256']).toBe(createHash('sha256').update(r.text).digest('hex'));

    // Byte for byte what the gRPC export assembles (the same rule, src/privacy/export-document.ts).
    const chunks: string[] = [];
    await receiveExport((await t.clientAs('user-id-123')).exportUser({ userId: 'user-id-123', reason: '' }), (c) => void chunks.push(c));
    const grpcDoc = JSON.parse(chunks.join('')) as Record<string, unknown>;
    expect({ ...doc, login_events: logins.length }).toEqual({ ...grpcDoc, login_events: (grpcDoc.login_events as unknown[]).length });
  });

  it.each([
    ['no token', 'GET', '/api/privacy/export/user-id-123', {}, 401, 'Missing bearer token: send `authorization: Bearer <JWT>` (gRPC metadata or HTTP header)'],
    ['a garbage token', 'GET', '/api/privacy/export/user-id-123', { token: 'not-a-jwt' }, 401, undefined],
    [
      'a member exporting another',
      'GET',
      '/api/privacy/export/user-id-123',
      { as: 'member-user-id-456' },
      403,
      "You do not have permission to export this user's data",
    ],
    ['an unknown user', 'GET', '/api/privacy/export/no-such-user', { as: 'platform-owner-id' }, 404, 'User not found'],
    ['an oversized id', 'GET', `/api/privacy/export/${'x'.repeat(257)}`, { as: 'platform-owner-id' }, 400, 'user_id must be at most 256 bytes'],
    [
      'an owner of one of two organizations',
      'DELETE',
      '/api/privacy/forget/user-id-123',
      { as: 'owner-user-id-1' },
      403,
      "You must be an owner of organization 'dev-team' to anonymize this user",
    ],
    ['a platform owner as subject', 'DELETE', '/api/privacy/forget/platform-owner-id', { as: 'owner-user-id-2' }, 403, 'Platform owners cannot be anonymized'],
    ['an unknown user to forget', 'DELETE', '/api/privacy/forget/no-such-user', { as: 'platform-owner-id' }, 404, 'User not found'],
    [
      'a body that is not JSON',
      'DELETE',
      '/api/privacy/forget/member-user-id-456',
      { as: 'platform-owner-id', body: '{reason' },
      400,
      'Request body is not valid JSON',
    ],
    [
      'an unknown body field',
      'DELETE',
      '/api/privacy/forget/member-user-id-456',
      { as: 'platform-owner-id', body: '{"reasn": "x"}' },
      400,
      'body.reasn is not a known field',
    ],
    [
      'a body over 16 KiB',
      'DELETE',
      '/api/privacy/forget/member-user-id-456',
      { as: 'platform-owner-id', body: JSON.stringify({ reason: 'r'.repeat(20_000) }) },
      413,
      'Request body is larger than 16384 bytes',
    ],
  ] as const)('refuses %s with the reference status and {"error": …}', async (_, method, path, opts, status, message) => {
    const r = await call(method, path, opts);
    expect(r.status).toBe(status);
    const body = r.json as { error: string };
    expect(Object.keys(body)).toEqual(['error']);
    if (message !== undefined) expect(body.error).toBe(message);
    expect(body.error).not.toContain('x'.repeat(20));
  });

  it('DELETE /api/privacy/forget/:user_id anonymizes with the reference answer; a repeated DELETE is safe', async () => {
    const r = await call('DELETE', '/api/privacy/forget/user-id-123', { as: 'owner-user-id-2' });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({
      success: true,
      message: 'User data has been anonymized. PII has been removed while preserving audit logs.',
      user_id: 'user-id-123',
      request_id: expect.stringMatching(/^[0-9a-f-]{36}$/) as string,
    });
    const again = await call('DELETE', '/api/privacy/forget/user-id-123', { as: 'owner-user-id-2', body: '{"reason": "asked twice"}' });
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ success: true, rows_affected: [] });
    // The same Idempotency-Key answers the first request again.
    const keyed = await call('DELETE', '/api/privacy/forget/user-id-123', { as: 'platform-owner-id', headers: { 'idempotency-key': 'http-forget-1' } });
    const replay = await call('DELETE', '/api/privacy/forget/user-id-123', { as: 'platform-owner-id', headers: { 'idempotency-key': 'http-forget-1' } });
    expect((replay.json as { request_id: string }).request_id).toBe((keyed.json as { request_id: string }).request_id);
    const exported = await call('GET', '/api/privacy/export/user-id-123', { as: 'platform-owner-id' });
    expect((exported.json as { email: string }).email).toMatch(/^anonymized-\d+@deleted\.local$/);
  });

  it("schedules a person's own erasure (202), changes nothing, and lets them cancel it", async () => {
    const r = await call('DELETE', '/api/privacy/forget/member-user-id-456', { as: 'member-user-id-456' });
    expect(r.status).toBe(202);
    const body = r.json as { scheduled: boolean; scheduled_for: string; request_id: string; message: string };
    expect(body).toMatchObject({ success: true, scheduled: true, user_id: 'member-user-id-456' });
    expect(Date.parse(body.scheduled_for) - Date.now()).toBeGreaterThan(6 * 86_400_000);
    expect(body.message).toBe(`Your erasure is scheduled for ${body.scheduled_for}; until then you can cancel it (privacy request ${body.request_id})`);
    const doc = await call('GET', '/api/privacy/export/member-user-id-456', { as: 'member-user-id-456' });
    expect((doc.json as { email: string }).email).toBe('member@example.com');

    const entry = await call('GET', `/api/privacy/requests/${body.request_id}`, { as: 'member-user-id-456' });
    expect(entry.json).toMatchObject({
      id: body.request_id,
      type: 'forget',
      state: 'scheduled',
      scheduled_for: body.scheduled_for,
      subject_id: 'member-user-id-456',
    });
    const cancelled = await call('POST', `/api/privacy/requests/${body.request_id}/cancel`, { as: 'member-user-id-456', body: '{}' });
    expect(cancelled.status).toBe(200);
    expect(cancelled.json).toMatchObject({ state: 'cancelled' });
    expect((await call('POST', `/api/privacy/requests/${body.request_id}/cancel`, { as: 'member-user-id-456' })).json).toEqual({
      error: 'Only a scheduled request can be cancelled; this one is cancelled',
    });
  });

  it('lists the ledger with page tokens, and refuses a forged token', async () => {
    const first = await call('GET', '/api/privacy/requests?page_size=2', { as: 'platform-owner-id' });
    expect(first.status).toBe(200);
    const page = first.json as { requests: Array<{ id: string; received_at: string }>; next_page_token: string };
    expect(page.requests).toHaveLength(2);
    expect(page.next_page_token).not.toBe('');
    const second = await call('GET', `/api/privacy/requests?page_size=2&page_token=${encodeURIComponent(page.next_page_token)}`, { as: 'platform-owner-id' });
    const ids = (second.json as { requests: Array<{ id: string }> }).requests.map((r) => r.id);
    expect(ids.some((id) => page.requests.some((r) => r.id === id))).toBe(false);
    const forged = await call('GET', `/api/privacy/requests?page_token=${encodeURIComponent(`${page.next_page_token.slice(0, -2)}xx`)}`, {
      as: 'platform-owner-id',
    });
    expect(forged).toMatchObject({ status: 400, json: { error: 'page_token is not valid' } });
    const bad = await call('GET', '/api/privacy/requests?due_within=soon', { as: 'platform-owner-id' });
    expect(bad).toMatchObject({ status: 400, json: { error: 'due_within must be a duration such as 24h or 7d' } });
    // Others see only what they asked for or are the subject of.
    const own = await call('GET', '/api/privacy/requests', { as: 'member-user-id-456' });
    expect(
      (own.json as { requests: Array<{ subject_id: string; requester: string }> }).requests.every(
        (r) => r.subject_id === 'member-user-id-456' || r.requester === 'member-user-id-456',
      ),
    ).toBe(true);
  });

  it('publishes an OpenAPI document generated from the routes, without a token; CORS stays off', async () => {
    const r = await call('GET', '/api/privacy/openapi.json');
    expect(r.status).toBe(200);
    const doc = r.json as { openapi: string; paths: Record<string, Record<string, unknown>> };
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.paths).sort()).toEqual([
      '/api/privacy/consents/{user_id}',
      '/api/privacy/consents/{user_id}/withdraw',
      '/api/privacy/export/{user_id}',
      '/api/privacy/forget/{user_id}',
      '/api/privacy/rectify/{user_id}',
      '/api/privacy/requests',
      '/api/privacy/requests/{id}',
      '/api/privacy/requests/{id}/cancel',
      '/api/privacy/requests/{id}/extend',
      '/api/privacy/restrict/{user_id}',
      '/api/privacy/restrict/{user_id}/lift',
    ]);
    expect(Object.keys(doc.paths['/api/privacy/forget/{user_id}'] ?? {})).toEqual(['delete']);
    const cors = await call('GET', '/api/privacy/export/user-id-123', { as: 'user-id-123', headers: { origin: 'https://evil.example' } });
    expect(cors.headers['access-control-allow-origin']).toBeUndefined();
    expect((await call('GET', '/nothing-here')).status).toBe(404);
  });
});

describe('the HTTP API with TLS on', () => {
  it('is served over HTTPS with the gRPC certificate, never in plaintext', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const https = await import('node:https');
    const { readFileSync } = await import('node:fs');
    const { createTestCa } = await import('../support/tls.js');
    const { loadServerConfig } = await import('../../src/config/config.js');
    const { startLetheServer } = await import('../../src/server/lethe-server.js');
    const { silentLogger } = await import('../support/engine-fixture.js');
    const dir = mkdtempSync(join(tmpdir(), 'lethe-https-'));
    const ca = createTestCa(dir, 'ca');
    const cert = ca.issue('server', { cn: 'lethe', dns: ['localhost'], ips: ['127.0.0.1'] });
    const server = await startLetheServer(
      loadServerConfig(
        { LETHE_LOG_LEVEL: 'silent' },
        { demo: true, listen: '127.0.0.1:0', httpListen: '127.0.0.1:0', dataDir: join(dir, 'data'), tlsCert: cert.certFile, tlsKey: cert.keyFile },
      ),
      silentLogger,
    );
    try {
      const token = await mintLocalToken(join(dir, 'data'), 'user-id-123', 60);
      const status = await new Promise<number>((resolve, reject) => {
        https
          .get(
            `https://127.0.0.1:${server.httpPort ?? 0}/api/privacy/export/user-id-123`,
            { ca: readFileSync(ca.certFile), headers: { authorization: `Bearer ${token}` } },
            (res) => {
              res.resume();
              resolve(res.statusCode ?? 0);
            },
          )
          .on('error', reject);
      });
      expect(status).toBe(200);
      const plain = await fetch(`http://127.0.0.1:${server.httpPort ?? 0}/api/privacy/openapi.json`).then(
        (r) => r.status,
        () => 'refused',
      );
      expect(plain).not.toBe(200);
    } finally {
      await server.stop(1_000);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the HTTP API rate limit', () => {
  it('answers 429 with a retry hint past LETHE_HTTP_RATE_LIMIT requests a minute from one client', async () => {
    const t = await startTestServer({ LETHE_HTTP_RATE_LIMIT: '3' });
    try {
      const url = `http://127.0.0.1:${t.server.httpPort ?? 0}/api/privacy/openapi.json`;
      const codes: number[] = [];
      for (let i = 0; i < 4; i++) codes.push((await fetch(url)).status);
      expect(codes).toEqual([200, 200, 200, 429]);
      const body = (await (await fetch(url)).json()) as { error: string };
      expect(body.error).toMatch(/^Too many requests; retry in \d+s$/);
    } finally {
      await t.stop();
    }
  });
});
