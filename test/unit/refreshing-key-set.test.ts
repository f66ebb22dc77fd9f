import { type CryptoKey, type JSONWebKeySet, type JWK, type KeyObject, SignJWT, exportJWK, generateKeyPair, jwtVerify } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { RefreshingKeySet } from '../../src/auth/refreshing-key-set.js';
import { UnavailableError } from '../../src/errors.js';

/** The key set's fetch policy, against a fake key source and a fake clock (pure logic). */

interface Signer {
  readonly kid: string;
  readonly privateKey: CryptoKey | KeyObject;
  readonly jwk: JWK;
}

async function signer(kid: string): Promise<Signer> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

const token = (s: Signer) => new SignJWT({}).setProtectedHeader({ alg: 'RS256', kid: s.kid }).setSubject('x').setExpirationTime('5m').sign(s.privateKey);

function source(initial: Signer[]) {
  const state = { keys: initial, fetches: 0, failWith: undefined as Error | undefined, gate: undefined as Promise<void> | undefined };
  const fetchKeys = async (): Promise<JSONWebKeySet> => {
    state.fetches += 1;
    if (state.gate !== undefined) await state.gate;
    if (state.failWith !== undefined) throw state.failWith;
    return { keys: state.keys.map((s) => s.jwk) };
  };
  return { state, fetchKeys };
}

describe('RefreshingKeySet', () => {
  let a: Signer;
  let b: Signer;
  let clock: number;
  const now = () => clock;
  const options = { cooldownMs: 30_000, retryBaseMs: 1_000, now };

  beforeAll(async () => {
    [a, b] = await Promise.all([signer('key-a'), signer('key-b')]);
  });

  it('fetches on first use only, and concurrent first calls share one fetch', async () => {
    clock = 0;
    const { state, fetchKeys } = source([a]);
    const keys = new RefreshingKeySet(fetchKeys, options);
    let release: () => void = () => undefined;
    state.gate = new Promise((r) => {
      release = r;
    });
    const t = await token(a);
    const calls = Promise.all([jwtVerify(t, keys.getKey), jwtVerify(t, keys.getKey), jwtVerify(t, keys.getKey)]);
    await new Promise((r) => setTimeout(r, 20)); // all three are waiting on the one fetch
    expect(state.fetches).toBe(1);
    release();
    expect((await calls).map((r) => r.payload.sub)).toEqual(['x', 'x', 'x']);
    await jwtVerify(t, keys.getKey);
    expect(state.fetches).toBe(1);
  });

  it('refetches once for an unknown key id (rotation), then not again within the cooldown', async () => {
    clock = 0;
    const { state, fetchKeys } = source([a]);
    const keys = new RefreshingKeySet(fetchKeys, options);
    await jwtVerify(await token(a), keys.getKey);
    expect(state.fetches).toBe(1);

    // The issuer rotates in key b; 40 s later a token signed with it arrives.
    state.keys = [a, b];
    clock = 40_000;
    expect((await jwtVerify(await token(b), keys.getKey)).payload.sub).toBe('x');
    expect(state.fetches).toBe(2);

    // Made-up key ids within the cooldown are refused without touching the source.
    const stranger = await signer('made-up');
    for (let i = 0; i < 20; i++) {
      clock += 100;
      await expect(jwtVerify(await token(stranger), keys.getKey)).rejects.toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' });
    }
    expect(state.fetches).toBe(2);

    // After the cooldown one more fetch is allowed.
    clock = 40_000 + 30_000;
    await expect(jwtVerify(await token(stranger), keys.getKey)).rejects.toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' });
    expect(state.fetches).toBe(3);
  });

  it('reports an unreachable source as UNAVAILABLE, retries after a doubling delay, and recovers', async () => {
    clock = 0;
    const { state, fetchKeys } = source([a]);
    const down = new UnavailableError('Cannot reach the Kubernetes API server to fetch its service-account keys; retry later');
    state.failWith = down;
    const keys = new RefreshingKeySet(fetchKeys, options);
    const t = await token(a);

    await expect(jwtVerify(t, keys.getKey)).rejects.toBe(down);
    expect(state.fetches).toBe(1);
    clock = 500; // within the first retry delay (1 s): the same answer, no fetch
    await expect(jwtVerify(t, keys.getKey)).rejects.toBe(down);
    expect(state.fetches).toBe(1);
    clock = 1_000;
    await expect(jwtVerify(t, keys.getKey)).rejects.toBe(down);
    expect(state.fetches).toBe(2);
    clock = 2_500; // second failure: 2 s delay from 1 000
    await expect(jwtVerify(t, keys.getKey)).rejects.toBe(down);
    expect(state.fetches).toBe(2);

    state.failWith = undefined;
    clock = 3_000;
    expect((await jwtVerify(t, keys.getKey)).payload.sub).toBe('x');
    expect(state.fetches).toBe(3);
  });

  it('keeps verifying with the keys it holds while a refetch fails, and wraps foreign errors', async () => {
    clock = 0;
    const { state, fetchKeys } = source([a]);
    const keys = new RefreshingKeySet(fetchKeys, options);
    await jwtVerify(await token(a), keys.getKey);
    state.failWith = new TypeError('fetch failed');
    clock = 60_000;
    const err = await jwtVerify(await token(b), keys.getKey).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toBe('Cannot fetch the keys to verify the token; retry later');
    expect((await jwtVerify(await token(a), keys.getKey)).payload.sub).toBe('x');
    expect(state.fetches).toBe(2);
  });

  it('treats a body that is not a key set as a failed fetch', async () => {
    clock = 0;
    const keys = new RefreshingKeySet(async () => ({ keys: 'nope' }) as unknown as JSONWebKeySet, options);
    await expect(jwtVerify(await token(a), keys.getKey)).rejects.toBeInstanceOf(UnavailableError);
  });
});
