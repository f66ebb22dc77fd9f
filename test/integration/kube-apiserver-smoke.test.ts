import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KUBE_VERSION, type KubeApiServer, kubeAssetsCacheDir, requireKubeAssets, startKubeApiServer } from '../support/kube-apiserver.js';

/**
 * The envtest-style harness itself: a real etcd + kube-apiserver from scripts/setup-kube-assets.sh
 * (or KUBEBUILDER_ASSETS), spoken to with plain node:https and the admin client certificate.
 */

const assets = requireKubeAssets();
const run = promisify(execFile);

describe.runIf(assets !== undefined)('kube-apiserver harness (real etcd + kube-apiserver)', () => {
  let kube: KubeApiServer;
  const ns = `lethe-smoke-${Date.now().toString(36)}`;

  beforeAll(async () => {
    kube = await startKubeApiServer(assets as string);
  });
  afterAll(async () => {
    await kube?.destroy();
  });

  it('GET /version reports the binary version (the pinned one for the cached build)', async () => {
    const res = await kube.request('GET', '/version');
    expect(res.status).toBe(200);
    const version = JSON.parse(res.body) as { gitVersion: string; major: string; minor: string };
    const { stdout } = await run(join(assets as string, 'kube-apiserver'), ['--version']);
    expect(stdout.trim()).toBe(`Kubernetes ${version.gitVersion}`);
    if (assets === kubeAssetsCacheDir()) {
      expect(version.gitVersion).toBe(`v${KUBE_VERSION}`);
      expect(`${version.major}.${version.minor}`).toBe(KUBE_VERSION.split('.').slice(0, 2).join('.'));
    }
  });

  it('creates a Namespace as the admin and reads it back', async () => {
    const created = await kube.request('POST', '/api/v1/namespaces', {
      body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: { 'app.kubernetes.io/part-of': 'lethe' } } },
    });
    expect(created.status, created.body).toBe(201);
    const got = await kube.request('GET', `/api/v1/namespaces/${ns}`);
    expect(got.status).toBe(200);
    expect((JSON.parse(got.body) as { metadata: { labels: Record<string, string> } }).metadata.labels['app.kubernetes.io/part-of']).toBe('lethe');
  });

  it('refuses unauthenticated and wrongly authenticated requests (RBAC is on)', async () => {
    // Anonymous auth is on (the default), so no credentials = system:anonymous, whom RBAC denies.
    const anonymous = await kube.request('GET', '/api/v1/namespaces', { anonymous: true });
    expect(anonymous.status).toBe(403);
    // A bearer token nobody issued fails authentication outright.
    const bogus = await kube.request('GET', '/api/v1/namespaces', { anonymous: true, headers: { authorization: 'Bearer not-a-token' } });
    expect(bogus.status).toBe(401);
    // An authenticated user without RBAC grants (impersonated by the admin) is denied too.
    const nobody = await kube.request('GET', '/api/v1/namespaces', { headers: { 'impersonate-user': 'jane' } });
    expect(nobody.status).toBe(403);
  });

  it('issues service-account tokens that verify against the JWKS at /openid/v1/jwks', async () => {
    const discovery = await kube.request('GET', '/.well-known/openid-configuration');
    expect(discovery.status).toBe(200);
    const config = JSON.parse(discovery.body) as { issuer: string; jwks_uri: string };
    expect(config.issuer).toBe(kube.serviceAccountIssuer);
    expect(config.jwks_uri).toBe(`${kube.serviceAccountIssuer}/openid/v1/jwks`);

    const jwksRes = await kube.request('GET', '/openid/v1/jwks', { headers: { accept: 'application/jwk-set+json' } });
    expect(jwksRes.status).toBe(200);
    expect(jwksRes.headers['content-type']).toBe('application/jwk-set+json');
    const jwks = JSON.parse(jwksRes.body) as JSONWebKeySet;
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: 'RSA', alg: 'RS256', use: 'sig' });

    // Discovery is for service accounts only by default (ClusterRoleBinding
    // system:service-account-issuer-discovery); a verifier outside the cluster needs it granted.
    expect((await kube.request('GET', '/openid/v1/jwks', { anonymous: true })).status).toBe(403);

    const sa = await kube.request('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, {
      body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'orders' } },
    });
    expect(sa.status, sa.body).toBe(201);
    const tr = await kube.request('POST', `/api/v1/namespaces/${ns}/serviceaccounts/orders/token`, {
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: ['lethe'], expirationSeconds: 600 } },
    });
    expect(tr.status, tr.body).toBe(201);
    const token = (JSON.parse(tr.body) as { status: { token: string } }).status.token;
    const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), { issuer: kube.serviceAccountIssuer, audience: 'lethe' });
    expect(payload.sub).toBe(`system:serviceaccount:${ns}:orders`);

    // A token for audience `lethe` is no credential for the API server itself (its audience
    // defaults to the issuer); one requested without audiences is, and RBAC then decides.
    const withLetheToken = await kube.request('GET', `/api/v1/namespaces/${ns}/pods`, { anonymous: true, headers: { authorization: `Bearer ${token}` } });
    expect(withLetheToken.status).toBe(401);
    const apiTr = await kube.request('POST', `/api/v1/namespaces/${ns}/serviceaccounts/orders/token`, {
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: {} },
    });
    expect(apiTr.status, apiTr.body).toBe(201);
    const apiToken = (JSON.parse(apiTr.body) as { status: { token: string } }).status.token;
    const asSa = await kube.request('GET', `/api/v1/namespaces/${ns}/pods`, { anonymous: true, headers: { authorization: `Bearer ${apiToken}` } });
    expect(asSa.status).toBe(403);
    expect(asSa.body).toContain(`system:serviceaccount:${ns}:orders`);
  });

  it.runIf(assets !== undefined && isExecutable(join(assets, 'kubectl')))('kubectl from the assets uses the kubeconfig (server-side dry run)', async () => {
    const { stdout } = await run(
      join(assets as string, 'kubectl'),
      ['--kubeconfig', kube.kubeconfigPath, 'create', 'configmap', 'probe', '-n', ns, '--from-literal=a=b', '--dry-run=server', '-o', 'name'],
      { timeout: 30_000 },
    );
    expect(stdout.trim()).toBe('configmap/probe');
    const cm = await kube.request('GET', `/api/v1/namespaces/${ns}/configmaps/probe`);
    expect(cm.status).toBe(404);
  });
});

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
