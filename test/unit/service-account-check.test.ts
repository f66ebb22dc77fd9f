import { type CryptoKey, type JWK, type KeyObject, SignJWT, createLocalJWKSet, exportJWK, generateKeyPair } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { createServiceAccountCheck } from '../../src/auth/service-account-verifier.js';
import type { TokenCheck } from '../../src/auth/token-routing.js';
import { PermissionDeniedError, UnauthenticatedError } from '../../src/errors.js';

/** The service-account token rules, with keys made here in place of the API server's JWKS. */

const ISSUER = 'https://kubernetes.default.svc.cluster.local';
const OPERATOR = 'system:serviceaccount:lethe-system:lethe-operator';

describe('createServiceAccountCheck', () => {
  let rsa: CryptoKey | KeyObject;
  let ec: CryptoKey | KeyObject;
  let ps: CryptoKey | KeyObject;
  let check: TokenCheck;

  const mint = (opts: { sub?: string; aud?: string; iss?: string; exp?: number | string | null; alg?: 'RS256' | 'ES256' | 'PS256'; kid?: string } = {}) => {
    const alg = opts.alg ?? 'RS256';
    const key = alg === 'ES256' ? ec : alg === 'PS256' ? ps : rsa;
    let jwt = new SignJWT({ 'kubernetes.io': { namespace: 'lethe-system' } })
      .setProtectedHeader({ alg, kid: opts.kid ?? alg })
      .setIssuer(opts.iss ?? ISSUER)
      .setAudience(opts.aud ?? 'lethe')
      .setIssuedAt();
    if (opts.sub !== '') jwt = jwt.setSubject(opts.sub ?? OPERATOR);
    if (opts.exp !== null) jwt = jwt.setExpirationTime(opts.exp ?? '10m');
    return jwt.sign(key);
  };
  const outcome = async (token: Promise<string>) => {
    try {
      return await check(await token);
    } catch (err) {
      if (err instanceof UnauthenticatedError || err instanceof PermissionDeniedError) return `${err.code}: ${err.message}`;
      throw err;
    }
  };

  beforeAll(async () => {
    const pub = async (alg: 'RS256' | 'ES256' | 'PS256') => {
      const pair = await generateKeyPair(alg, { extractable: true });
      return { privateKey: pair.privateKey, jwk: { ...(await exportJWK(pair.publicKey)), kid: alg, alg, use: 'sig' } as JWK };
    };
    const [r, e, p] = await Promise.all([pub('RS256'), pub('ES256'), pub('PS256')]);
    rsa = r.privateKey;
    ec = e.privateKey;
    ps = p.privateKey;
    check = createServiceAccountCheck(
      { issuer: ISSUER, audience: 'lethe' },
      new Set([OPERATOR, 'platform-owner-id']),
      createLocalJWKSet({ keys: [r.jwk, e.jwk, p.jwk] }),
    );
  });

  it('accepts a trusted service account as a platform principal, signed RS256 or ES256', async () => {
    expect(await outcome(mint())).toEqual({ id: OPERATOR, role: 'platform' });
    expect(await outcome(mint({ alg: 'ES256' }))).toEqual({ id: OPERATOR, role: 'platform' });
  });

  it('refuses any other service account with PERMISSION_DENIED, naming it', async () => {
    expect(await outcome(mint({ sub: 'system:serviceaccount:team-a:orders' }))).toBe(
      'PERMISSION_DENIED: Service account system:serviceaccount:team-a:orders is not a trusted principal of this server',
    );
  });

  it('refuses a subject that is not a service account, even one trusted as a platform principal', async () => {
    const msg = 'UNAUTHENTICATED: Token subject (sub) is not a service account (system:serviceaccount:<namespace>:<name>)';
    expect(await outcome(mint({ sub: 'platform-owner-id' }))).toBe(msg);
    expect(await outcome(mint({ sub: 'system:serviceaccount:lethe-system' }))).toBe(msg);
    expect(await outcome(mint({ sub: 'system:serviceaccount:lethe-system:lethe-operator:extra' }))).toBe(msg);
    expect(await outcome(mint({ sub: '' }))).toBe("UNAUTHENTICATED: Token claim 'sub' is not accepted"); // no sub at all
  });

  it('refuses the wrong audience or issuer, expired tokens (beyond the 60 s leeway) and tokens without exp', async () => {
    expect(await outcome(mint({ aud: 'other' }))).toBe("UNAUTHENTICATED: Token claim 'aud' is not accepted");
    expect(await outcome(mint({ iss: 'https://other.cluster' }))).toBe("UNAUTHENTICATED: Token claim 'iss' is not accepted");
    const now = Math.floor(Date.now() / 1000);
    expect(await outcome(mint({ exp: now - 120 }))).toBe('UNAUTHENTICATED: Token has expired');
    expect(await outcome(mint({ exp: now - 10 }))).toEqual({ id: OPERATOR, role: 'platform' });
    expect(await outcome(mint({ exp: null }))).toBe("UNAUTHENTICATED: Token claim 'exp' is not accepted");
  });

  it('refuses algorithms the API server does not use, and unknown keys', async () => {
    expect(await outcome(mint({ alg: 'PS256' }))).toBe('UNAUTHENTICATED: Token algorithm is not accepted');
    expect(await outcome(mint({ kid: 'rotated-away' }))).toBe('UNAUTHENTICATED: Token was signed by a key this server does not trust');
  });
});
