import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadClientConfig } from '../../src/config/client-config.js';
import { loadServerConfig } from '../../src/config/config.js';
import { loadOperatorConfig } from '../../src/config/operator-config.js';
import { loadSidecarConfig } from '../../src/config/sidecar-config.js';
import { handshakeFailureReason } from '../../src/tls/server-credentials.js';
import { describeTlsFailure } from '../../src/runtime/tls-errors.js';

const HOME = '/home/lethe-test';

describe('server TLS settings', () => {
  it('plaintext unless a certificate and key are given (the local demo)', () => {
    const c = loadServerConfig({ HOME });
    expect(c.tls).toBeUndefined();
    expect(c.healthListen).toBeUndefined();
  });

  it('flags win over LETHE_TLS_*; paths are resolved; the reload interval defaults to 10s', () => {
    const env = { HOME, LETHE_TLS_CERT: '/env/tls.crt', LETHE_TLS_KEY: '/env/tls.key', LETHE_TLS_CLIENT_CA: 'ca.crt' };
    expect(loadServerConfig(env).tls).toEqual({ certFile: '/env/tls.crt', keyFile: '/env/tls.key', clientCaFile: resolve('ca.crt'), reloadIntervalMs: 10_000 });
    expect(loadServerConfig(env, { tlsCert: 'flag.crt', tlsKey: 'flag.key' }).tls).toMatchObject({
      certFile: resolve('flag.crt'),
      keyFile: resolve('flag.key'),
    });
    expect(loadServerConfig({ ...env, LETHE_TLS_RELOAD_INTERVAL: '250ms', LETHE_GRPC_HEALTH_LISTEN: '0.0.0.0:8086' })).toMatchObject({
      tls: { reloadIntervalMs: 250 },
      healthListen: { host: '0.0.0.0', port: 8086 },
    });
  });

  it.each([
    [{ LETHE_TLS_CERT: 'a.crt' }, {}, 'LETHE_TLS_CERT: is set but --tls-key (LETHE_TLS_KEY) is not'],
    [{}, { tlsKey: 'a.key' }, '--tls-key: is set but --tls-cert (LETHE_TLS_CERT) is not'],
    [{ LETHE_TLS_CLIENT_CA: 'ca.crt' }, {}, 'LETHE_TLS_CLIENT_CA: requires TLS: set --tls-cert and --tls-key'],
    [{ LETHE_TLS_CERT: 'a.crt', LETHE_TLS_KEY: 'a.key', LETHE_TLS_RELOAD_INTERVAL: '5m' }, {}, 'LETHE_TLS_RELOAD_INTERVAL: must be from 100ms to 1m'],
    [{ LETHE_TLS_CERT: 'a.crt', LETHE_TLS_KEY: 'a.key', LETHE_TLS_RELOAD_INTERVAL: 'often' }, {}, "LETHE_TLS_RELOAD_INTERVAL: 'often' is not a duration"],
    [{ LETHE_GRPC_HEALTH_LISTEN: 'health' }, {}, "LETHE_GRPC_HEALTH_LISTEN: 'health' is not HOST:PORT"],
  ])('refuses %j %j: %s', (env, flags, message) => {
    expect(() => loadServerConfig({ HOME, ...env }, flags)).toThrow(message);
  });
});

describe('client TLS settings (CLI and operator)', () => {
  it('TLS exactly when a CA is given; a client certificate needs the CA', () => {
    expect(loadClientConfig({ HOME }, {}).tls).toBeUndefined();
    expect(loadClientConfig({ HOME, LETHE_TLS_CA: '/ca.crt' }, {}).tls).toEqual({
      caFile: '/ca.crt',
      certFile: undefined,
      keyFile: undefined,
      serverName: undefined,
    });
    expect(loadClientConfig({ HOME }, { tlsCa: '/a.crt', tlsCert: '/c.crt', tlsKey: '/c.key', tlsServerName: 'lethe-server.lethe.svc' }).tls).toEqual({
      caFile: '/a.crt',
      certFile: '/c.crt',
      keyFile: '/c.key',
      serverName: 'lethe-server.lethe.svc',
    });
    expect(() => loadClientConfig({ HOME }, { tlsServerName: 'x' })).toThrow('--tls-server-name: is set but --tls-ca (LETHE_TLS_CA) is not');
    expect(() => loadClientConfig({ HOME }, { tlsCert: '/c.crt', tlsKey: '/c.key' })).toThrow(
      '--tls-cert: is set but --tls-ca (LETHE_TLS_CA) is not: a client certificate is sent over TLS only',
    );
    expect(() => loadClientConfig({ HOME, LETHE_TLS_CA: '/a.crt' }, { tlsCert: '/c.crt' })).toThrow('--tls-cert: is set but --tls-key (LETHE_TLS_KEY) is not');
  });

  it('the operator reads the same variables (it has no flags)', () => {
    const base = { LETHE_TOKEN: 'abc.def.ghi', KUBECONFIG: '/kubeconfig' };
    expect(loadOperatorConfig(base).tls).toBeUndefined();
    expect(loadOperatorConfig({ ...base, LETHE_TLS_CA: '/ca.crt', LETHE_TLS_CERT: '/op.crt', LETHE_TLS_KEY: '/op.key' }).tls).toEqual({
      caFile: '/ca.crt',
      certFile: '/op.crt',
      keyFile: '/op.key',
      serverName: undefined,
    });
    expect(() => loadOperatorConfig({ ...base, LETHE_TLS_CERT: '/op.crt', LETHE_TLS_KEY: '/op.key' })).toThrow(
      'LETHE_TLS_CERT: is set but LETHE_TLS_CA is not',
    );
  });
});

describe('NATS and PostgreSQL TLS settings', () => {
  const sidecar = (env: Record<string, string>) =>
    loadSidecarConfig({ DATABASE_URL: 'postgresql://db/orders', LETHE_NATS_URL: 'nats://nats:4222', ...env }, { service: 'orders', dataMap: 'orders.yaml' });

  it('NATS: TLS with a tls:// URL or LETHE_NATS_TLS_CA, its own variables (not the server certificate)', () => {
    expect(sidecar({}).natsTls).toBeUndefined();
    expect(sidecar({ LETHE_NATS_URL: 'tls://nats:4222' }).natsTls).toEqual({ caFile: undefined, certFile: undefined, keyFile: undefined });
    expect(sidecar({ LETHE_NATS_TLS_CA: '/nats-ca.crt', LETHE_NATS_TLS_CERT: '/c.crt', LETHE_NATS_TLS_KEY: '/c.key' }).natsTls).toEqual({
      caFile: '/nats-ca.crt',
      certFile: '/c.crt',
      keyFile: '/c.key',
    });
    expect(
      loadServerConfig({ HOME, LETHE_NATS_URL: 'nats://n:4222', LETHE_NATS_TLS_CA: '/nats-ca.crt', LETHE_TLS_CERT: '/s.crt', LETHE_TLS_KEY: '/s.key' }).events
        .natsTls,
    ).toEqual({ caFile: '/nats-ca.crt', certFile: undefined, keyFile: undefined });
    expect(() => loadServerConfig({ HOME, LETHE_NATS_TLS_CA: '/nats-ca.crt' })).toThrow('LETHE_NATS_TLS_CA: is set but LETHE_NATS_URL is not');
    expect(() => sidecar({ LETHE_NATS_TLS_CERT: '/c.crt' })).toThrow('LETHE_NATS_TLS_CERT: is set but LETHE_NATS_TLS_KEY is not');
  });

  it('PostgreSQL: sslmode must be one node-postgres knows, and never no-verify', () => {
    expect(() => sidecar({ DATABASE_URL: 'postgresql://db/orders?sslmode=verify-full&sslrootcert=/ca.crt' })).not.toThrow();
    expect(() => sidecar({ DATABASE_URL: 'postgresql://db/orders?sslmode=verifyfull' })).toThrow("DATABASE_URL: sslmode 'verifyfull' is not one of");
    expect(() => loadServerConfig({ HOME, DATABASE_URL: 'postgresql://db/id?sslmode=no-verify', LETHE_ARTIFACT_KEY: 'ab'.repeat(32) })).toThrow(
      'DATABASE_URL: sslmode=no-verify accepts any certificate',
    );
  });
});

describe('TLS failures, in words and bounded labels', () => {
  it('names why a handshake was refused, from the error code only', () => {
    expect(handshakeFailureReason({ code: 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' })).toBe('no_client_certificate');
    expect(handshakeFailureReason({ code: 'ECONNRESET' }, { authorizationError: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' })).toBe('untrusted_client_certificate');
    expect(handshakeFailureReason({ code: 'ECONNRESET' }, { authorizationError: undefined })).toBe('aborted');
    expect(handshakeFailureReason({ code: 'ERR_SSL_WRONG_VERSION_NUMBER' })).toBe('not_tls');
    expect(handshakeFailureReason({ code: 'ERR_SSL_UNSUPPORTED_PROTOCOL' })).toBe('protocol_version');
    expect(handshakeFailureReason({ code: 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' })).toBe('certificate_rejected_by_client');
    expect(handshakeFailureReason(new Error('x'))).toBe('other');
  });

  it('explains a dependency TLS failure, looking through causes', () => {
    expect(describeTlsFailure(Object.assign(new Error('self-signed certificate in certificate chain'), { code: 'SELF_SIGNED_CERT_IN_CHAIN' }))).toContain(
      "the server's certificate is not trusted",
    );
    expect(describeTlsFailure(new Error('wrapped', { cause: Object.assign(new Error('x'), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' }) }))).toContain(
      'does not name the host',
    );
    expect(describeTlsFailure(new Error('The server does not support SSL connections'))).toContain('does not offer TLS');
    expect(describeTlsFailure(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }))).toBeUndefined();
  });
});
