import { type JWTVerifyGetKey, jwtVerify } from 'jose';
import type { ServiceAccountAuthConfig } from '../config/config.js';
import { PermissionDeniedError, UnauthenticatedError } from '../errors.js';
import { translateJoseError } from './jose-errors.js';
import type { TokenCheck } from './token-routing.js';

/** What kube-apiserver signs service-account tokens with (RSA or ECDSA P-256 keys). */
const SERVICE_ACCOUNT_ALGORITHMS = ['RS256', 'ES256'];

/** kube-apiserver's own leeway for exp/nbf (client clocks drift from the API server's). */
const CLOCK_TOLERANCE_SECONDS = 60;

const SUBJECT = /^system:serviceaccount:([a-z0-9]([-a-z0-9]*[a-z0-9])?):([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/;

/**
 * Service principals: a Kubernetes service-account token for this server's audience, signed by
 * one of the API server's keys. Only the accounts listed in LETHE_PLATFORM_PRINCIPALS are
 * principals of this server (with platform rights); any other account of the cluster is refused
 * with PERMISSION_DENIED, never taken for a user.
 */
export function createServiceAccountCheck(
  config: Pick<ServiceAccountAuthConfig, 'issuer' | 'audience'>,
  platformPrincipals: ReadonlySet<string>,
  getKey: JWTVerifyGetKey,
): TokenCheck {
  return async (token) => {
    let sub: string;
    try {
      const { payload } = await jwtVerify(token, getKey, {
        issuer: config.issuer,
        audience: config.audience,
        algorithms: SERVICE_ACCOUNT_ALGORITHMS,
        requiredClaims: ['sub', 'exp'],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
      });
      sub = payload.sub ?? '';
    } catch (err) {
      throw translateJoseError(err);
    }
    if (sub.length > 256 || !SUBJECT.test(sub)) {
      throw new UnauthenticatedError('Token subject (sub) is not a service account (system:serviceaccount:<namespace>:<name>)');
    }
    if (!platformPrincipals.has(sub)) {
      throw new PermissionDeniedError(`Service account ${sub} is not a trusted principal of this server`);
    }
    return { id: sub, role: 'platform' };
  };
}
