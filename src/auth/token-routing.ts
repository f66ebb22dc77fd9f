import { decodeJwt } from 'jose';
import { UnauthenticatedError } from '../errors.js';
import type { Principal } from '../privacy/principal.js';

/** Checks one bearer token (already taken out of its `authorization` metadata). */
export type TokenCheck = (token: string) => Promise<Principal>;

/** The token check the server's middleware calls with the `authorization` metadata. */
export type Verifier = (authorization: string | undefined) => Promise<Principal>;

/** The JWT of `authorization: Bearer <JWT>`; anything else is UNAUTHENTICATED. */
export function bearerToken(authorization: string | undefined): string {
  const m = authorization === undefined ? null : /^Bearer\s+([A-Za-z0-9._~+/=-]+)$/i.exec(authorization);
  if (m === null || m[1] === undefined) {
    throw new UnauthenticatedError('Missing bearer token: send `authorization: Bearer <JWT>` (gRPC metadata or HTTP header)');
  }
  return m[1];
}

/** The `iss` a token claims, unverified: only good for choosing which check verifies it. */
export function claimedIssuer(token: string): string | undefined {
  try {
    const { iss } = decodeJwt(token);
    return typeof iss === 'string' ? iss : undefined;
  } catch {
    return undefined; // not a JWT: the fallback check refuses it with its own message
  }
}

/**
 * Routes each token by its claimed issuer: a token naming one of `routes` goes to that check,
 * any other to `fallback`. The issuer is not trusted here; the chosen check verifies it (with
 * the signature) like every other claim, so a forged `iss` only picks which key must have signed.
 */
export function routeByIssuer(routes: ReadonlyMap<string, TokenCheck>, fallback: TokenCheck): Verifier {
  return async (authorization) => {
    const token = bearerToken(authorization);
    const issuer = claimedIssuer(token);
    const check = issuer === undefined ? undefined : routes.get(issuer);
    return (check ?? fallback)(token);
  };
}
