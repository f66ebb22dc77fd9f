import { errors } from 'jose';
import { LetheError, UnauthenticatedError, UnavailableError } from '../errors.js';

/**
 * A failed jose verification as a domain error: UNAUTHENTICATED for a token that is not good,
 * UNAVAILABLE when the keys could not be fetched. Domain errors thrown while fetching keys pass
 * through unchanged.
 */
export function translateJoseError(err: unknown): Error {
  if (err instanceof LetheError) return err;
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
