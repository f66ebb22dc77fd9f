import { request } from 'node:https';
import type { RequestOptions } from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import type { JSONWebKeySet } from 'jose';
import type { Logger } from 'pino';
import { UnavailableError, errorSummary } from '../errors.js';
import { RefreshingKeySet } from './refreshing-key-set.js';

const JWKS_PATH = '/openid/v1/jwks';
/** What the server's own identity must be allowed to `get` (non-resource URLs). */
const DISCOVERY_PATHS = [JWKS_PATH, '/.well-known/openid-configuration'] as const;

const TIMEOUT_MS = 5_000;
const MAX_BYTES = 1 << 20;
const COOLDOWN_MS = 30_000;
const RETRY_BASE_MS = 1_000;

/** The API server's service-account signing keys, refreshed on key rotation (see RefreshingKeySet). */
export function createApiServerKeySet(kc: KubeConfig, logger?: Logger): RefreshingKeySet {
  const server = kc.getCurrentCluster()?.server ?? '';
  return new RefreshingKeySet(
    async () => {
      try {
        const jwks = await fetchServiceAccountKeys(kc);
        logger?.info({ apiServer: server, keys: jwks.keys.length }, 'fetched the service-account keys from the Kubernetes API server');
        return jwks;
      } catch (err) {
        const cause = err instanceof Error && err.cause !== undefined ? errorSummary(err.cause) : undefined;
        logger?.warn(
          { apiServer: server, err: errorSummary(err), cause, reason: err instanceof UnavailableError ? err.message : undefined },
          'cannot fetch the service-account keys',
        );
        throw err;
      }
    },
    { cooldownMs: COOLDOWN_MS, retryBaseMs: RETRY_BASE_MS },
  );
}

/**
 * GET /openid/v1/jwks with the server's own credentials (the kubeconfig's or the pod's): the
 * endpoint is not anonymous. Every failure is UNAVAILABLE, with what to fix when it is a refusal.
 */
export async function fetchServiceAccountKeys(kc: KubeConfig, timeoutMs = TIMEOUT_MS): Promise<JSONWebKeySet> {
  const server = kc.getCurrentCluster()?.server;
  if (server === undefined) throw new UnavailableError('No Kubernetes API server is configured to fetch service-account keys from');
  const opts: RequestOptions = { method: 'GET', headers: { accept: 'application/jwk-set+json, application/json' }, timeout: timeoutMs };
  await kc.applyToHTTPSOptions(opts);
  const { status, body } = await get(new URL(JWKS_PATH, server), opts).catch((err: unknown) => {
    throw new UnavailableError('Cannot reach the Kubernetes API server to fetch its service-account keys; retry later', { cause: err });
  });
  if (status === 401) {
    throw new UnavailableError(
      `The Kubernetes API server did not accept this server's own credentials (HTTP 401 on ${JWKS_PATH}); check its service-account token or kubeconfig`,
    );
  }
  if (status === 403) {
    throw new UnavailableError(
      `The Kubernetes API server refused this server its service-account keys (HTTP 403 on ${JWKS_PATH}): grant its identity get on the non-resource URLs ${DISCOVERY_PATHS.join(' and ')}`,
    );
  }
  if (status !== 200) throw new UnavailableError(`The Kubernetes API server answered HTTP ${status} on ${JWKS_PATH}; retry later`);
  let jwks: unknown;
  try {
    jwks = JSON.parse(body);
  } catch {
    jwks = undefined;
  }
  if (!isJwks(jwks)) throw new UnavailableError(`The Kubernetes API server answered ${JWKS_PATH} with something that is not a JWK set`);
  return jwks;
}

function isJwks(v: unknown): v is JSONWebKeySet {
  return (
    typeof v === 'object' &&
    v !== null &&
    Array.isArray((v as { keys?: unknown }).keys) &&
    (v as { keys: unknown[] }).keys.every((k) => typeof k === 'object' && k !== null)
  );
}

function get(url: URL, opts: RequestOptions): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, opts, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_BYTES) req.destroy(new Error(`${url.pathname}: answer over ${MAX_BYTES} bytes`));
        else chunks.push(c);
      });
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error(`${url.pathname}: no answer within ${opts.timeout ?? 0} ms`)));
    req.on('error', reject);
    req.end();
  });
}
