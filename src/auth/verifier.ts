import { type KeyObject, createPublicKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { type CryptoKey, type JWTVerifyGetKey, createRemoteJWKSet, errors, importJWK, jwtVerify } from 'jose';
import type { Logger } from 'pino';
import type { AuthConfig, ServiceAccountAuthConfig } from '../config/config.js';
import { ConfigError, UnauthenticatedError, UnavailableError } from '../errors.js';
import { createApiServerKeySet } from './api-server-keys.js';
import { translateJoseError } from './jose-errors.js';
import { loadKubeConfig } from '../kube/kube-config.js';
import { ensureLocalKey } from './local-key.js';
import { rememberVerified } from './remembered-tokens.js';
import { createServiceAccountCheck } from './service-account-verifier.js';
import { type TokenCheck, type Verifier, routeByIssuer } from './token-routing.js';

export type { Verifier } from './token-routing.js';

const ALGORITHMS = ['ES256', 'ES384', 'RS256', 'RS384', 'RS512', 'PS256', 'EdDSA'];

/**
 * Builds the server's token check: user tokens from the configured trust (the local key, a
 * public key file, or a JWKS URL) and, when configured, Kubernetes service-account tokens for
 * service principals, told apart by their issuer. Tokens that passed are remembered for a while
 * (rememberVerified).
 */
export async function createVerifier(
  auth: AuthConfig,
  dataDir: string,
  platformPrincipals: ReadonlySet<string>,
  options: { readonly serviceAccounts?: ServiceAccountAuthConfig | undefined; readonly logger?: Logger } = {},
): Promise<Verifier> {
  const users = await createUserTokenCheck(auth, dataDir, platformPrincipals);
  const routes = new Map<string, TokenCheck>();
  const sa = options.serviceAccounts;
  if (sa !== undefined) {
    const keys = createApiServerKeySet(loadKubeConfig(sa.apiServer), options.logger);
    // Fetched once at start-up so that a missing RBAC grant shows in the log at once; a failure
    // is not fatal (the API server may come later): calls answer UNAVAILABLE until it works.
    keys.refresh(undefined).catch(() => undefined);
    routes.set(sa.issuer, createServiceAccountCheck(sa, platformPrincipals, keys.getKey));
  }
  return rememberVerified(routeByIssuer(routes, users));
}

/**
 * User tokens: unsigned (`alg: none`), expired, wrongly signed tokens and tokens for another
 * issuer or audience are refused with UNAUTHENTICATED.
 */
const SERVICE_ACCOUNT_PREFIX = 'system:serviceaccount:';

export async function createUserTokenCheck(auth: AuthConfig, dataDir: string, platformPrincipals: ReadonlySet<string>): Promise<TokenCheck> {
  let key: CryptoKey | KeyObject | JWTVerifyGetKey;
  if (auth.mode === 'local') {
    const { publicJwk } = await ensureLocalKey(dataDir);
    key = (await importJWK(publicJwk, 'ES256')) as CryptoKey;
  } else if (auth.mode === 'public-key') {
    const pem = await readFile(auth.publicKeyFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new ConfigError(`cannot read ${auth.publicKeyFile} (${err.code ?? 'error'})`, 'LETHE_JWT_PUBLIC_KEY_FILE');
    });
    try {
      key = createPublicKey(pem);
    } catch (err) {
      throw new ConfigError('must hold a PEM public key (-----BEGIN PUBLIC KEY-----)', 'LETHE_JWT_PUBLIC_KEY_FILE', { cause: err });
    }
  } else {
    key = unavailableWhenUnreachable(createRemoteJWKSet(auth.jwksUrl, { timeoutDuration: 5_000, cooldownDuration: 30_000 }));
  }

  return async (token) => {
    try {
      const { payload } = await jwtVerify(token, key as JWTVerifyGetKey, {
        issuer: auth.issuer,
        audience: auth.audience,
        algorithms: ALGORITHMS,
        requiredClaims: ['sub', 'exp'],
      });
      const sub = payload.sub ?? '';
      if (sub.length === 0 || sub.length > 256) throw new UnauthenticatedError('Token subject (sub) is empty or too long');
      // Only the cluster may speak for its service accounts: another issuer naming one is refused.
      if (sub.startsWith(SERVICE_ACCOUNT_PREFIX))
        throw new UnauthenticatedError("Service-account subjects are accepted only from the cluster's service-account issuer");
      return { id: sub, role: platformPrincipals.has(sub) ? 'platform' : 'user' };
    } catch (err) {
      throw translateJoseError(err);
    }
  };
}

/**
 * The JWKS URL's failures (no answer, an error status, not a key set) are UNAVAILABLE, not the
 * caller's fault; only "no key for this token" stays a verdict on the token.
 */
function unavailableWhenUnreachable(remote: JWTVerifyGetKey): JWTVerifyGetKey {
  return async (header, token) => {
    try {
      return await remote(header, token);
    } catch (err) {
      if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys || err instanceof errors.JOSENotSupported) throw err;
      throw new UnavailableError('Cannot reach the JWKS URL to verify the token; retry later', { cause: err });
    }
  };
}
