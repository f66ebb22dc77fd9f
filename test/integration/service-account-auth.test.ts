import { mkdtempSync, rmSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type CryptoKey, SignJWT, decodeProtectedHeader, exportJWK, generateKeyPair } from 'jose';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLocalKey, mintLocalToken } from '../../src/auth/local-key.js';
import { receiveExport } from '../../src/client/export-receiver.js';
import { RequestState, RequestType } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { FORGET_MESSAGE } from '../../src/privacy/engine.js';
import { type KubeApiServer, requireKubeAssets, startKubeApiServer } from '../support/kube-apiserver.js';
import { status } from '../support/grpc-status.js';
import { type PostgresCluster, freePort, requirePostgres, startPostgres } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

/**
 * Service principals on a real kube-apiserver: the server verifies projected service-account
 * tokens (audience `lethe`) against the API server's JWKS, which it fetches as its own
 * ServiceAccount holding nothing but the ClusterRole the chart grants. Only the configured
 * accounts are principals; user tokens keep working beside them.
 */

const assets = requireKubeAssets();
const bin = requirePostgres();
const REASON = 'GDPR Right to be Forgotten';
const IDP_ISSUER = 'https://idp.example.test';
/** The rule the chart grants the server (README, "Service principals in Kubernetes"). */
const KEYS_RULE = { nonResourceURLs: ['/openid/v1/jwks', '/.well-known/openid-configuration'], verbs: ['get'] };
let keySeq = 0;
const idempotencyKey = () => `sa-key-${++keySeq}`;

describe.runIf(assets !== undefined && bin !== undefined)('service-account tokens verified against a real kube-apiserver', () => {
  let kube: KubeApiServer;
  let cluster: PostgresCluster;
  let url: string;
  let t: TestServer;
  /** Users from an identity provider's JWKS URL, services from the cluster, side by side. */
  let withIdp: TestServer;
  let idp: Server;
  let idpKey: CryptoKey;
  let scratch: string;
  const ns = `lethe-sa-${Date.now().toString(36)}`;
  const operator = `system:serviceaccount:${ns}:lethe-operator`;

  const admin = async (method: string, path: string, body?: unknown) => {
    const res = await kube.request(method, path, body === undefined ? {} : { body });
    if (res.status >= 300) throw new Error(`${method} ${path}: HTTP ${res.status} ${res.body}`);
    return JSON.parse(res.body) as unknown;
  };
  const tokenFor = async (account: string, spec: { audiences?: string[]; expirationSeconds?: number }) => {
    const tr = (await admin('POST', `/api/v1/namespaces/${ns}/serviceaccounts/${account}/token`, {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenRequest',
      spec: { expirationSeconds: 600, ...spec },
    })) as { status: { token: string } };
    return tr.status.token;
  };
  const forgetOn = (server: TestServer, token: string, userId: string) =>
    status(server.clientWithToken(token).forgetUser({ userId, reason: REASON, idempotencyKey: idempotencyKey() }));
  const forget = (token: string, userId: string) => forgetOn(t, token, userId);

  beforeAll(async () => {
    [kube, cluster] = await Promise.all([startKubeApiServer(assets ?? ''), startPostgres(bin ?? '')]);
    url = await cluster.createDatabase();
    await admin('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
    for (const name of ['lethe-operator', 'intruder', 'lethe-server']) {
      await admin('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name } });
    }
    // Every ServiceAccount may read the issuer discovery documents through this default binding;
    // a hardened cluster removes it. Without it the server's identity has nothing but what the
    // test grants, which proves the chart's rule sufficient on its own.
    await admin('DELETE', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:service-account-issuer-discovery');
    await admin('POST', '/apis/rbac.authorization.k8s.io/v1/clusterroles', {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: `${ns}-service-account-keys` },
      rules: [KEYS_RULE],
    });

    // The server's kubeconfig: its ServiceAccount's token (audience: the API server) and the CA.
    scratch = mkdtempSync(join(tmpdir(), 'lethe-sa-'));
    const serverToken = await tokenFor('lethe-server', { expirationSeconds: 3600 });
    const kubeconfig = kube.kubeconfigForToken(serverToken);
    const serviceAccounts = { LETHE_SERVICE_ACCOUNT_ISSUER: kube.serviceAccountIssuer, LETHE_PLATFORM_PRINCIPALS: operator, KUBECONFIG: kubeconfig };
    t = await startTestServer({ DATABASE_URL: url, ...serviceAccounts });

    const pair = await generateKeyPair('ES256', { extractable: true });
    idpKey = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'idp-1', alg: 'ES256', use: 'sig' };
    const idpPort = await freePort();
    idp = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => idp.listen(idpPort, '127.0.0.1', r));
    withIdp = await startTestServer({
      DATABASE_URL: await cluster.createDatabase(),
      LETHE_JWKS_URL: `http://127.0.0.1:${idpPort}/jwks.json`,
      LETHE_JWT_ISSUER: IDP_ISSUER,
      LETHE_JWT_AUDIENCE: 'lethe-api',
      LETHE_HASH_KEY: 'cd'.repeat(32),
      ...serviceAccounts,
    });
  });

  afterAll(async () => {
    await t?.stop();
    await withIdp?.stop();
    idp?.close();
    await kube?.destroy();
    await cluster?.destroy();
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
  });

  it('answers UNAVAILABLE, naming the missing grant, while the server may not read the keys', async () => {
    const token = await tokenFor('lethe-operator', { audiences: ['lethe'] });
    expect(await forget(token, 'member-user-id-456')).toEqual({
      code: 'UNAVAILABLE',
      details:
        'The Kubernetes API server refused this server its service-account keys (HTTP 403 on /openid/v1/jwks): grant its identity get on the non-resource URLs /openid/v1/jwks and /.well-known/openid-configuration',
    });
  });

  it('accepts the trusted operator as a platform principal once the ClusterRole is bound', async () => {
    await admin('POST', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: `${ns}-lethe-server` },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: `${ns}-service-account-keys` },
      subjects: [{ kind: 'ServiceAccount', namespace: ns, name: 'lethe-server' }],
    });
    const token = await tokenFor('lethe-operator', { audiences: ['lethe'] });
    expect(decodeProtectedHeader(token).alg).toBe('RS256');

    // An organization owner may not forget user-id-123 (not an owner of dev-team)…
    expect(await status((await t.clientAs('owner-user-id-1')).forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: idempotencyKey() }))).toEqual(
      {
        code: 'PERMISSION_DENIED',
        details: "You must be an owner of organization 'dev-team' to anonymize this user",
      },
    );

    // …the operator may. The server retries the key fetch with a growing delay after a
    // failure, so the first calls after the grant may still be UNAVAILABLE.
    const client = t.clientWithToken(token);
    const deadline = Date.now() + 30_000;
    let outcome = await status(client.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: 'operator-forget' }));
    while (outcome.code === 'UNAVAILABLE' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      outcome = await status(client.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: 'operator-forget' }));
    }
    expect(outcome).toEqual({ code: 'OK', details: '' });

    const r = await client.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: 'operator-forget' });
    expect(r).toMatchObject({ success: true, message: FORGET_MESSAGE, userId: 'user-id-123', replayed: true });
    expect(r.rowsAffected).toContainEqual({ table: 'users', action: 'update', rows: 1 });
    const { request } = await client.getPrivacyRequest({ id: r.requestId });
    expect(request).toMatchObject({
      type: RequestType.REQUEST_TYPE_FORGET,
      subjectId: 'user-id-123',
      requester: operator,
      state: RequestState.REQUEST_STATE_COMPLETED,
    });

    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const { rows } = await c.query<{ email: string }>('SELECT email FROM users WHERE id = $1', ['user-id-123']);
      expect(rows[0]?.email).toMatch(/^anonymized-\d+@deleted\.local$/);
      const audit = await c.query<{ actor_id: string }>("SELECT actor_id FROM audit_log WHERE event_type = 'user_anonymized' AND target_id = $1", [
        'user-id-123',
      ]);
      expect(audit.rows.map((a) => a.actor_id)).toEqual([operator]);
    } finally {
      await c.end();
    }
  });

  it('refuses any other service account of the cluster with PERMISSION_DENIED, never as a user', async () => {
    const token = await tokenFor('intruder', { audiences: ['lethe'] });
    const denied = { code: 'PERMISSION_DENIED', details: `Service account system:serviceaccount:${ns}:intruder is not a trusted principal of this server` };
    expect(await forget(token, 'member-user-id-456')).toEqual(denied);
    // Not even its own "data", as a user could.
    const stream = t.clientWithToken(token).exportUser({ userId: `system:serviceaccount:${ns}:intruder`, reason: '' });
    expect(await status(receiveExport(stream, () => undefined))).toEqual(denied);
  });

  it('refuses a token for another audience, and one the API server would accept for itself', async () => {
    const other = await tokenFor('lethe-operator', { audiences: ['other'] });
    expect(await forget(other, 'member-user-id-456')).toEqual({ code: 'UNAUTHENTICATED', details: "Token claim 'aud' is not accepted" });
    const apiAudience = await tokenFor('lethe-operator', {});
    expect(await forget(apiAudience, 'member-user-id-456')).toEqual({ code: 'UNAUTHENTICATED', details: "Token claim 'aud' is not accepted" });
  });

  it('refuses tokens signed by keys the API server does not hold, whatever issuer they claim', async () => {
    const { privateKey } = await generateKeyPair('RS256');
    const forge = (iss: string, kid: string) =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'RS256', kid })
        .setIssuer(iss)
        .setSubject(operator)
        .setAudience('lethe')
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(privateKey);
    // Another issuer goes to the user token check, which trusts only the local (EC) key.
    expect(await forget(await forge('https://elsewhere.example', 'elsewhere-1'), 'member-user-id-456')).toEqual({
      code: 'UNAUTHENTICATED',
      details: 'Token was signed by a key this server does not trust',
    });
    // The cluster's issuer with an unknown key id, then with the real key id and a foreign signature.
    expect(await forget(await forge(kube.serviceAccountIssuer, 'not-a-cluster-key'), 'member-user-id-456')).toEqual({
      code: 'UNAUTHENTICATED',
      details: 'Token was signed by a key this server does not trust',
    });
    const realKid = decodeProtectedHeader(await tokenFor('lethe-operator', { audiences: ['lethe'] })).kid ?? '';
    expect(realKid).not.toBe('');
    expect(await forget(await forge(kube.serviceAccountIssuer, realKid), 'member-user-id-456')).toEqual({
      code: 'UNAUTHENTICATED',
      details: 'Token signature is invalid',
    });
  });

  it('keeps accepting user tokens from the local key beside service accounts', async () => {
    const stream = (await t.clientAs('owner-user-id-1')).exportUser({ userId: 'member-user-id-456', reason: '' });
    expect(await status(receiveExport(stream, () => undefined))).toEqual({ code: 'OK', details: '' });
    const r = await (await t.clientAs('owner-user-id-1')).forgetUser({ userId: 'member-user-id-456', reason: REASON, idempotencyKey: idempotencyKey() });
    expect(r).toMatchObject({ success: true, userId: 'member-user-id-456' });
  });

  it('serves users from a JWKS URL and service accounts from the cluster side by side', async () => {
    const userToken = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'idp-1' })
      .setIssuer(IDP_ISSUER)
      .setAudience('lethe-api')
      .setSubject('owner-user-id-1')
      .setExpirationTime('5m')
      .sign(idpKey);
    const users = withIdp.clientWithToken(userToken);
    expect(await status(receiveExport(users.exportUser({ userId: 'member-user-id-456', reason: '' }), () => undefined))).toEqual({ code: 'OK', details: '' });
    expect(await status(users.forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: idempotencyKey() }))).toEqual({
      code: 'PERMISSION_DENIED',
      details: "You must be an owner of organization 'dev-team' to anonymize this user",
    });
    const r = await withIdp
      .clientWithToken(await tokenFor('lethe-operator', { audiences: ['lethe'] }))
      .forgetUser({ userId: 'user-id-123', reason: REASON, idempotencyKey: idempotencyKey() });
    expect(r).toMatchObject({ success: true, userId: 'user-id-123' });
    expect(await forgetOn(withIdp, await tokenFor('intruder', { audiences: ['lethe'] }), 'member-user-id-456')).toEqual({
      code: 'PERMISSION_DENIED',
      details: `Service account system:serviceaccount:${ns}:intruder is not a trusted principal of this server`,
    });
    // A local signing key is not trusted in this mode, whatever subject it names.
    await ensureLocalKey(scratch);
    expect(await forgetOn(withIdp, await mintLocalToken(scratch, 'platform-owner-id', 60), 'member-user-id-456')).toEqual({
      code: 'UNAUTHENTICATED',
      details: 'Token was signed by a key this server does not trust',
    });
  });
});
