import { errors } from 'jose';
import { LetheError, UnauthenticatedError } from '../errors.js';

const UNTRUSTED_KEY = () => new UnauthenticatedError('Token was signed by a key this server does not trust');

/**
 * A failed jose verification as a domain error: UNAUTHENTICATED for a token that is not good.
 * Domain errors thrown by the key sources (UNAVAILABLE when keys cannot be fetched) pass through.
 */
export function translateJoseError(err: unknown): Error {
  if (err instanceof LetheError) return err;
  if (err instanceof errors.JWTExpired) return new UnauthenticatedError('Token has expired');
  if (err instanceof errors.JWTClaimValidationFailed) return new UnauthenticatedError(`Token claim '${err.claim}' is not accepted`);
  if (err instanceof errors.JWSSignatureVerificationFailed) return new UnauthenticatedError('Token signature is invalid');
  if (err instanceof errors.JOSEAlgNotAllowed) return new UnauthenticatedError('Token algorithm is not accepted');
  if (err instanceof errors.JWKSNoMatchingKey) return UNTRUSTED_KEY();
  if (err instanceof errors.JOSEError) return new UnauthenticatedError('Token is malformed or not a signed JWT');
  // jose's TypeError once the key is chosen: the key cannot check this token (e.g. an RS256
  // token against an EC key). Key sources report their own failures as UNAVAILABLE before this.
  if (err instanceof TypeError) return UNTRUSTED_KEY();
  return new UnauthenticatedError('Token could not be verified');
}
