import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LOCAL_ISSUER, loadServerConfig } from '../../src/config/config.js';
import { HOME, configErrorOf } from '../support/config-fixture.js';

/** loadServerConfig: whom the server trusts (user tokens, platform principals, service accounts). */

describe('loadServerConfig: authentication', () => {
  it('verifies with a JWKS URL, issuer and audience', () => {
    const c = loadServerConfig({
      HOME,
      LETHE_JWKS_URL: 'https://idp.example.com/.well-known/jwks.json',
      LETHE_JWT_ISSUER: 'https://idp.example.com',
      LETHE_JWT_AUDIENCE: 'lethe',
    });
    expect(c.auth).toEqual({
      mode: 'jwks',
      jwksUrl: new URL('https://idp.example.com/.well-known/jwks.json'),
      issuer: 'https://idp.example.com',
      audience: 'lethe',
    });
  });

  it('verifies with a public key file, resolved', () => {
    const c = loadServerConfig({ HOME, LETHE_JWT_PUBLIC_KEY_FILE: 'keys/jwt.pem', LETHE_JWT_ISSUER: 'iss', LETHE_JWT_AUDIENCE: 'aud' });
    expect(c.auth).toEqual({ mode: 'public-key', publicKeyFile: resolve('keys/jwt.pem'), issuer: 'iss', audience: 'aud' });
  });

  it.each([
    [
      'a JWKS URL without issuer',
      { LETHE_JWKS_URL: 'https://idp/jwks', LETHE_JWT_AUDIENCE: 'aud' },
      'LETHE_JWT_ISSUER',
      'LETHE_JWT_ISSUER: required with a JWKS URL or public key: the issuer (iss) tokens must carry',
    ],
    [
      'a JWKS URL without audience',
      { LETHE_JWKS_URL: 'https://idp/jwks', LETHE_JWT_ISSUER: 'iss' },
      'LETHE_JWT_AUDIENCE',
      'LETHE_JWT_AUDIENCE: required with a JWKS URL or public key: the audience (aud) tokens must carry',
    ],
    [
      'a public key without issuer',
      { LETHE_JWT_PUBLIC_KEY_FILE: '/k.pem', LETHE_JWT_AUDIENCE: 'aud' },
      'LETHE_JWT_ISSUER',
      'LETHE_JWT_ISSUER: required with a JWKS URL or public key: the issuer (iss) tokens must carry',
    ],
    [
      'both a JWKS URL and a public key',
      { LETHE_JWKS_URL: 'https://idp/jwks', LETHE_JWT_PUBLIC_KEY_FILE: '/k.pem', LETHE_JWT_ISSUER: 'iss', LETHE_JWT_AUDIENCE: 'aud' },
      'LETHE_JWKS_URL',
      'LETHE_JWKS_URL: set either LETHE_JWKS_URL or LETHE_JWT_PUBLIC_KEY_FILE, not both',
    ],
    [
      'a JWKS URL that is not a URL',
      { LETHE_JWKS_URL: 'not a url', LETHE_JWT_ISSUER: 'iss', LETHE_JWT_AUDIENCE: 'aud' },
      'LETHE_JWKS_URL',
      'LETHE_JWKS_URL: must be an http(s) URL',
    ],
  ])('refuses %s', (_label, env, source, message) => {
    const err = configErrorOf({ HOME, ...env });
    expect(err.source).toBe(source);
    expect(err.message).toBe(message);
  });

  it('refuses a JWKS URL that is not http(s), as its message promises', () => {
    const err = configErrorOf({ HOME, LETHE_JWKS_URL: 'ftp://idp.example.com/jwks.json', LETHE_JWT_ISSUER: 'iss', LETHE_JWT_AUDIENCE: 'aud' });
    expect(err.message).toBe('LETHE_JWKS_URL: must be an http(s) URL');
  });
});

describe('loadServerConfig: LETHE_PLATFORM_PRINCIPALS', () => {
  it.each([
    ['lethe-operator', ['lethe-operator']],
    [' lethe-operator , billing-service ,,billing-service, ', ['lethe-operator', 'billing-service']],
    ['', []],
    [' , ', []],
  ])('%j is the set %j', (value, principals) => {
    const c = loadServerConfig({ HOME, LETHE_PLATFORM_PRINCIPALS: value });
    expect(c.platformPrincipals).toBeInstanceOf(Set);
    expect([...c.platformPrincipals]).toEqual(principals);
  });
});

describe('loadServerConfig: service principals (LETHE_SERVICE_ACCOUNT_ISSUER)', () => {
  const ISSUER = 'https://kubernetes.default.svc.cluster.local';
  const IN_POD = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
  const NO_API_SERVER =
    'LETHE_SERVICE_ACCOUNT_ISSUER: is set, but verifying service-account tokens needs the Kubernetes API server: run in a pod (in-cluster: KUBERNETES_SERVICE_HOST) or set KUBECONFIG';

  it('is off unless the issuer is set, even in a pod', () => {
    expect(loadServerConfig({ HOME }).serviceAccounts).toBeUndefined();
    expect(loadServerConfig({ HOME, ...IN_POD, KUBECONFIG: '/k' }).serviceAccounts).toBeUndefined();
  });

  it('reaches the API server in-cluster from a pod, with audience lethe by default', () => {
    const c = loadServerConfig({ HOME, LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER, ...IN_POD });
    expect(c.serviceAccounts).toEqual({
      issuer: ISSUER,
      audience: 'lethe',
      apiServer: { source: 'in-cluster', host: '10.96.0.1', port: 443, neededBy: 'LETHE_SERVICE_ACCOUNT_ISSUER' },
    });
    expect(c.auth.mode).toBe('local');
    const v6 = loadServerConfig({ HOME, LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER, KUBERNETES_SERVICE_HOST: 'fd00::1' });
    expect(v6.serviceAccounts?.apiServer).toEqual({ source: 'in-cluster', host: 'fd00::1', port: 443, neededBy: 'LETHE_SERVICE_ACCOUNT_ISSUER' });
  });

  it('prefers KUBECONFIG (resolved) over the in-cluster environment, and takes the audience', () => {
    const c = loadServerConfig({
      HOME,
      LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER,
      LETHE_SERVICE_ACCOUNT_AUDIENCE: 'lethe-prod',
      KUBECONFIG: 'dev/kubeconfig',
      ...IN_POD,
    });
    expect(c.serviceAccounts).toEqual({ issuer: ISSUER, audience: 'lethe-prod', apiServer: { source: 'kubeconfig', path: resolve('dev/kubeconfig') } });
  });

  it('coexists with a JWKS URL for users', () => {
    const c = loadServerConfig({
      HOME,
      LETHE_JWKS_URL: 'https://idp.example.com/jwks',
      LETHE_JWT_ISSUER: 'https://idp.example.com',
      LETHE_JWT_AUDIENCE: 'lethe',
      LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER,
      KUBECONFIG: '/etc/lethe/kubeconfig',
    });
    expect(c.auth.mode).toBe('jwks');
    expect(c.serviceAccounts?.issuer).toBe(ISSUER);
  });

  it.each([
    ['no way to reach the API server', { LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER }, 'LETHE_SERVICE_ACCOUNT_ISSUER', NO_API_SERVER],
    ['an empty KUBECONFIG outside a pod', { LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER, KUBECONFIG: '' }, 'LETHE_SERVICE_ACCOUNT_ISSUER', NO_API_SERVER],
    [
      'a list of kubeconfig files',
      { LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER, KUBECONFIG: '/a:/b' },
      'KUBECONFIG',
      'KUBECONFIG: name one kubeconfig file (a list of files is not supported)',
    ],
    [
      'a bad in-cluster port',
      { LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER, KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: 'https' },
      'KUBERNETES_SERVICE_PORT',
      "KUBERNETES_SERVICE_PORT: 'https' is not a port",
    ],
    [
      'an issuer with spaces',
      { LETHE_SERVICE_ACCOUNT_ISSUER: 'my cluster', KUBECONFIG: '/k' },
      'LETHE_SERVICE_ACCOUNT_ISSUER',
      "LETHE_SERVICE_ACCOUNT_ISSUER: must be the cluster's service-account issuer, e.g. https://kubernetes.default.svc.cluster.local",
    ],
    [
      'an empty audience',
      { LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER, KUBECONFIG: '/k', LETHE_SERVICE_ACCOUNT_AUDIENCE: '' },
      'LETHE_SERVICE_ACCOUNT_AUDIENCE',
      'LETHE_SERVICE_ACCOUNT_AUDIENCE: must be one audience without spaces',
    ],
    [
      'the local key’s issuer',
      { LETHE_SERVICE_ACCOUNT_ISSUER: LOCAL_ISSUER, KUBECONFIG: '/k' },
      'LETHE_SERVICE_ACCOUNT_ISSUER',
      "LETHE_SERVICE_ACCOUNT_ISSUER: 'lethe-local' is also the issuer of user tokens (the local signing key): the two trust sources need distinct issuers",
    ],
    [
      'the user tokens’ issuer',
      { LETHE_JWKS_URL: 'https://idp/jwks', LETHE_JWT_ISSUER: ISSUER, LETHE_JWT_AUDIENCE: 'aud', LETHE_SERVICE_ACCOUNT_ISSUER: ISSUER, KUBECONFIG: '/k' },
      'LETHE_SERVICE_ACCOUNT_ISSUER',
      `LETHE_SERVICE_ACCOUNT_ISSUER: '${ISSUER}' is also the issuer of user tokens (LETHE_JWT_ISSUER): the two trust sources need distinct issuers`,
    ],
  ])('refuses %s', (_label, env, source, message) => {
    const err = configErrorOf({ HOME, ...env });
    expect(err.source).toBe(source);
    expect(err.message).toBe(message);
  });
});
