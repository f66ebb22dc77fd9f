import { type KeyObject, createPublicKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { type CryptoKey, type JWTVerifyGetKey, createRemoteJWKSet, errors, importJWK, jwtVerify } from 'jose';
import type { AuthConfig } from '../config/config.js';
import { ConfigError, UnauthenticatedError, UnavailableError } from '../errors.js';
import type { Principal } from '../privacy/principal.js';
import { ensureLocalKey } from './local-key.js';

export type Verifier = (authorization: string | undefined) => Promise<Principal>;

const ALGORITHMS = ['ES256', 'ES384', 'RS256', 'RS384', 'RS512', 'PS256', 'EdDSA'];

/**
 * Builds the token check for the configured trust: the local key, a public key file, or a JWKS
 * URL. Unsigned (`alg: none`), expired, wrongly signed tokens and tokens for another issuer or
 * audience are refused with UNAUTHENTICATED.
 */
export async function createVerifier(auth: AuthConfig, dataDir: string, platformPrincipals: ReadonlySet<string>): Promise<Verifier> {
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
    key = createRemoteJWKSet(auth.jwksUrl, { timeoutDuration: 5_000, cooldownDuration: 30_000 });
  }

  return async (authorization) => {
    const m = authorization === undefined ? null : /^Bearer\s+([A-Za-z0-9._~+/=-]+)$/i.exec(authorization);
    if (m === null || m[1] === undefined) {
      throw new UnauthenticatedError('Missing bearer token: send `authorization: Bearer <JWT>` metadata');
    }
    try {
      const { payload } = await jwtVerify(m[1], key as JWTVerifyGetKey, {
        issuer: auth.issuer,
        audience: auth.audience,
        algorithms: ALGORITHMS,
        requiredClaims: ['sub', 'exp'],
      });
      const sub = payload.sub ?? '';
      if (sub.length === 0 || sub.length > 256) throw new UnauthenticatedError('Token subject (sub) is empty or too long');
      return { id: sub, role: platformPrincipals.has(sub) ? 'platform' : 'user' };
    } catch (err) {
      throw translateJoseError(err);
    }
  };
}

function translateJoseError(err: unknown): Error {
  if (err instanceof UnauthenticatedError) return err;
  if (err instanceof errors.JWTExpired) return new UnauthenticatedError('Token has expired');
  if (err instanceof errors.JWTClaimValidationFailed) return new UnauthenticatedError(`Token claim '${err.claim}' is not accepted`);
  if (err instanceof errors.JWSSignatureVerificationFailed) return new UnauthenticatedError('Token signature is invalid');
  if (err instanceof errors.JOSEAlgNotAllowed) return new UnauthenticatedError('Token algorithm is not accepted');
  if (err instanceof errors.JWKSNoMatchingKey) return new UnauthenticatedError('Token was signed by a key this server does not trust');
  if (err instanceof errors.JWKSTimeout) return new UnavailableError('Cannot reach the JWKS URL to verify the token; retry later');
  if (err instanceof errors.JOSEError) return new UnauthenticatedError('Token is malformed or not a signed JWT');
  if (err instanceof TypeError || (err as { code?: unknown }).code === 'ECONNREFUSED') {
    return new UnavailableError('Cannot reach the JWKS URL to verify the token; retry later');
  }
  return new UnauthenticatedError('Token could not be verified');
}
