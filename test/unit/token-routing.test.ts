import { UnsecuredJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { bearerToken, claimedIssuer, routeByIssuer } from '../../src/auth/token-routing.js';
import { UnauthenticatedError } from '../../src/errors.js';

const SA_ISSUER = 'https://kubernetes.default.svc.cluster.local';
const unsigned = (claims: Record<string, unknown>) => new UnsecuredJWT(claims).encode();

describe('bearerToken', () => {
  it('takes the JWT out of `Bearer <JWT>` (any case)', () => {
    expect(bearerToken('Bearer a.b.c')).toBe('a.b.c');
    expect(bearerToken('bearer  a.b.c')).toBe('a.b.c');
  });

  it.each([undefined, '', 'a.b.c', 'Basic dXNlcjpwdw==', 'Bearer a.b c'])('refuses %j with UNAUTHENTICATED', (value) => {
    expect(() => bearerToken(value)).toThrow(
      new UnauthenticatedError('Missing bearer token: send `authorization: Bearer <JWT>` (gRPC metadata or HTTP header)'),
    );
  });
});

describe('claimedIssuer', () => {
  it('reads iss without verifying anything', () => {
    expect(claimedIssuer(unsigned({ iss: SA_ISSUER, sub: 'x' }))).toBe(SA_ISSUER);
  });

  it('is undefined for a token without a string iss, or not a JWT', () => {
    expect(claimedIssuer(unsigned({ sub: 'x' }))).toBeUndefined();
    expect(claimedIssuer(unsigned({ iss: 42 }))).toBeUndefined();
    expect(claimedIssuer('not-a-jwt')).toBeUndefined();
    expect(claimedIssuer('a.b.c')).toBeUndefined();
  });
});

describe('routeByIssuer', () => {
  const seen: Array<[string, string]> = [];
  const verify = routeByIssuer(
    new Map([
      [
        SA_ISSUER,
        async (token: string) => {
          seen.push(['service-account', token]);
          return { id: 'system:serviceaccount:lethe:lethe-operator', role: 'platform' as const };
        },
      ],
    ]),
    async (token) => {
      seen.push(['users', token]);
      return { id: 'user-id-123', role: 'user' };
    },
  );

  it('sends a token naming the service-account issuer to its check, with the bare token', async () => {
    seen.length = 0;
    const token = unsigned({ iss: SA_ISSUER, sub: 'system:serviceaccount:lethe:lethe-operator' });
    expect(await verify(`Bearer ${token}`)).toEqual({ id: 'system:serviceaccount:lethe:lethe-operator', role: 'platform' });
    expect(seen).toEqual([['service-account', token]]);
  });

  it('sends every other token, and anything that is not a JWT, to the user check', async () => {
    seen.length = 0;
    const other = unsigned({ iss: 'https://idp.example.com', sub: 'user-id-123' });
    const none = unsigned({ sub: 'user-id-123' });
    const prefixed = unsigned({ iss: `${SA_ISSUER}/`, sub: 'x' });
    for (const token of [other, none, prefixed, 'garbage']) await verify(`Bearer ${token}`);
    expect(seen).toEqual([
      ['users', other],
      ['users', none],
      ['users', prefixed],
      ['users', 'garbage'],
    ]);
  });

  it('refuses a missing or malformed header before routing', async () => {
    seen.length = 0;
    await expect(verify(undefined)).rejects.toThrow(UnauthenticatedError);
    await expect(verify('Token abc')).rejects.toThrow(UnauthenticatedError);
    expect(seen).toEqual([]);
  });
});
