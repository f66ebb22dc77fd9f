import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type CryptoKey, SignJWT, exportJWK, exportSPKI, generateKeyPair } from 'jose';
import { ClientError, Status } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLocalKey, mintLocalToken } from '../../src/auth/local-key.js';
import { freePort } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

/**
 * A production configuration trusts its identity provider only: tokens from the JWKS URL (or
 * the configured public key) with the configured issuer and audience. The local signing key
 * that `lethe token` uses is then refused.
 */

const ISSUER = 'https://idp.example.test';
const AUDIENCE = 'lethe-api';

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (err) {
    if (err instanceof ClientError) return Status[err.code];
    throw err;
  }
}

describe('production token verification', () => {
  let idp: Server;
  let signer: CryptoKey;
  let jwks: TestServer;
  let pem: TestServer;
  let scratch: string;

  const idpToken = (sub: string) =>
    new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'idp-1' })
      .setSubject(sub)
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setExpirationTime('5m')
      .sign(signer);
  const exportWith = async (t: TestServer, token: string) => {
    const stream = t.clientWithToken(token).exportUser({ userId: 'user-id-123', reason: '' });
    return code(
      (async () => {
        for await (const _ of stream) {
          // drain
        }
      })(),
    );
  };

  beforeAll(async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    signer = privateKey;
    const jwk = { ...(await exportJWK(publicKey)), kid: 'idp-1', alg: 'ES256', use: 'sig' };
    const port = await freePort();
    idp = createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => idp.listen(port, '127.0.0.1', r));

    scratch = mkdtempSync(join(tmpdir(), 'lethe-auth-'));
    const pemFile = join(scratch, 'idp.pem');
    writeFileSync(pemFile, await exportSPKI(publicKey));
    const common = { LETHE_JWT_ISSUER: ISSUER, LETHE_JWT_AUDIENCE: AUDIENCE, LETHE_HASH_KEY: 'ab'.repeat(32) };
    jwks = await startTestServer({ ...common, LETHE_JWKS_URL: `http://127.0.0.1:${port}/.well-known/jwks.json` });
    pem = await startTestServer({ ...common, LETHE_JWT_PUBLIC_KEY_FILE: pemFile });
  });

  afterAll(async () => {
    await jwks?.stop();
    await pem?.stop();
    idp?.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  it('accepts a token from the JWKS URL and from the configured public key', async () => {
    expect(await exportWith(jwks, await idpToken('user-id-123'))).toBe('OK');
    expect(await exportWith(pem, await idpToken('user-id-123'))).toBe('OK');
  });

  it('refuses tokens minted with a local signing key', async () => {
    await ensureLocalKey(scratch);
    const local = await mintLocalToken(scratch, 'platform-owner-id', 60);
    expect(await exportWith(jwks, local)).toBe('UNAUTHENTICATED');
    expect(await exportWith(pem, local)).toBe('UNAUTHENTICATED');
  });

  it('refuses the right key with another issuer or audience', async () => {
    const other = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'idp-1' })
      .setSubject('user-id-123')
      .setIssuer('https://evil.test')
      .setAudience(AUDIENCE)
      .setExpirationTime('5m')
      .sign(signer);
    expect(await exportWith(jwks, other)).toBe('UNAUTHENTICATED');
    const aud = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'idp-1' })
      .setSubject('user-id-123')
      .setIssuer(ISSUER)
      .setAudience('other')
      .setExpirationTime('5m')
      .sign(signer);
    expect(await exportWith(pem, aud)).toBe('UNAUTHENTICATED');
  });
});
