import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchServiceAccountKeys } from '../../src/auth/api-server-keys.js';
import { loadKubeConfig } from '../../src/kube/kube-config.js';
import { ConfigError, UnavailableError } from '../../src/errors.js';
import { freePort } from '../support/postgres.js';

/** How the server's client configuration for the API server is built from src/config's result. */

describe('loadKubeConfig', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'lethe-kubeconfig-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('in a pod: the configured host and port, the mounted CA and token file', () => {
    const sa = join(dir, 'serviceaccount');
    mkdirSync(sa);
    writeFileSync(join(sa, 'token'), 'the-pod-token');
    writeFileSync(join(sa, 'ca.crt'), 'ca');
    const kc = loadKubeConfig({ source: 'in-cluster', host: '10.96.0.1', port: 443, neededBy: 'LETHE_SERVICE_ACCOUNT_ISSUER' }, sa);
    expect(kc.getCurrentCluster()).toMatchObject({ server: 'https://10.96.0.1:443', caFile: join(sa, 'ca.crt'), skipTLSVerify: false });
    expect(kc.getCurrentUser()?.authProvider).toEqual({ name: 'tokenFile', config: { tokenFile: join(sa, 'token') } });
    expect(
      loadKubeConfig({ source: 'in-cluster', host: 'fd00::1', port: 6443, neededBy: 'LETHE_SERVICE_ACCOUNT_ISSUER' }, sa).getCurrentCluster()?.server,
    ).toBe('https://[fd00::1]:6443');
  });

  it('in a pod without a mounted token: a ConfigError saying what to mount', () => {
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    expect(() => loadKubeConfig({ source: 'in-cluster', host: '10.96.0.1', port: 443, neededBy: 'LETHE_SERVICE_ACCOUNT_ISSUER' }, empty)).toThrow(
      new ConfigError(
        `needs the Kubernetes API server, and in this pod ${join(empty, 'token')} cannot be read: mount the pod's service-account token (automountServiceAccountToken), or set KUBECONFIG`,
        'LETHE_SERVICE_ACCOUNT_ISSUER',
      ),
    );
  });

  it('a kubeconfig file: its current context', () => {
    const path = join(dir, 'kubeconfig');
    writeFileSync(path, kubeconfig('https://127.0.0.1:6443'));
    const kc = loadKubeConfig({ source: 'kubeconfig', path });
    expect(kc.getCurrentCluster()?.server).toBe('https://127.0.0.1:6443');
    expect(kc.getCurrentUser()?.token).toBe('server-token');
  });

  it('a missing or useless kubeconfig: a ConfigError naming KUBECONFIG', () => {
    const missing = join(dir, 'missing');
    expect(() => loadKubeConfig({ source: 'kubeconfig', path: missing })).toThrow(new ConfigError(`cannot load ${missing} (ENOENT)`, 'KUBECONFIG'));
    const bare = join(dir, 'bare');
    writeFileSync(bare, 'apiVersion: v1\nkind: Config\n');
    expect(() => loadKubeConfig({ source: 'kubeconfig', path: bare })).toThrow(
      new ConfigError(`${bare} has no current-context naming a cluster and a user`, 'KUBECONFIG'),
    );
  });

  it('an API server that does not answer: UNAVAILABLE, without its address', async () => {
    const path = join(dir, 'closed');
    writeFileSync(path, kubeconfig(`https://127.0.0.1:${await freePort()}`));
    const err = await fetchServiceAccountKeys(loadKubeConfig({ source: 'kubeconfig', path })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toBe('Cannot reach the Kubernetes API server to fetch its service-account keys; retry later');
  });
});

function kubeconfig(server: string): string {
  return [
    'apiVersion: v1',
    'kind: Config',
    `clusters: [{name: c, cluster: {server: "${server}"}}]`,
    'users: [{name: u, user: {token: server-token}}]',
    'contexts: [{name: x, context: {cluster: c, user: u}}]',
    'current-context: x',
    '',
  ].join('\n');
}
