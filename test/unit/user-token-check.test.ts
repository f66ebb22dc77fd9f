import { mkdtempSync, rmSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { createUserTokenCheck } from '../../src/auth/verifier.js';
import { LOCAL_AUDIENCE, LOCAL_ISSUER } from '../../src/config/config.js';
import { LetheError } from '../../src/errors.js';
import { freePort } from '../support/postgres.js';

/** The user token check's verdicts when the key cannot check the token or cannot be fetched. */

const ISSUER = 'https://idp.example.test';

async function verdict(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (err) {
    if (err instanceof LetheError) return `${err.code}: ${err.message}`;
    throw err;
  }
}

describe('createUserTokenCheck', () => {
  let dataDir: string;
  let idp: Server;
  let idpPort: number;
  let rsaToken: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'lethe-user-check-'));
    const { privateKey } = await generateKeyPair('RS256');
    rsaToken = await new SignJWT({})
      .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
      .setIssuer(ISSUER)
      .setAudience('lethe')
      .setSubject('user-id-123')
      .setExpirationTime('5m')
      .sign(privateKey);
    idpPort = await freePort();
    idp = createServer((_req, res) => {
      res.statusCode = 500;
      res.end('down for maintenance');
    });
    await new Promise<void>((r) => idp.listen(idpPort, '127.0.0.1', r));
  });
  afterAll(() => {
    idp?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('local key: a token its EC key cannot check is UNAUTHENTICATED, not a server problem', async () => {
    const check = await createUserTokenCheck({ mode: 'local', issuer: LOCAL_ISSUER, audience: LOCAL_AUDIENCE }, dataDir, new Set());
    expect(await verdict(check(rsaToken))).toBe('UNAUTHENTICATED: Token was signed by a key this server does not trust');
  });

  it('JWKS URL: no answer, or an error status, is UNAVAILABLE', async () => {
    const closed = await createUserTokenCheck(
      { mode: 'jwks', jwksUrl: new URL(`http://127.0.0.1:${await freePort()}/jwks`), issuer: ISSUER, audience: 'lethe' },
      dataDir,
      new Set(),
    );
    expect(await verdict(closed(rsaToken))).toBe('UNAVAILABLE: Cannot reach the JWKS URL to verify the token; retry later');
    const failing = await createUserTokenCheck(
      { mode: 'jwks', jwksUrl: new URL(`http://127.0.0.1:${idpPort}/jwks`), issuer: ISSUER, audience: 'lethe' },
      dataDir,
      new Set(),
    );
    expect(await verdict(failing(rsaToken))).toBe('UNAVAILABLE: Cannot reach the JWKS URL to verify the token; retry later');
  });

  it('a user token may not name a service account, even one trusted as a platform principal', async () => {
    const operator = 'system:serviceaccount:lethe-system:lethe-operator';
    const check = await createUserTokenCheck({ mode: 'local', issuer: LOCAL_ISSUER, audience: LOCAL_AUDIENCE }, dataDir, new Set([operator]));
    expect(await verdict(check(await mintLocalToken(dataDir, operator, 60)))).toBe(
      "UNAUTHENTICATED: Service-account subjects are accepted only from the cluster's service-account issuer",
    );
    expect(await verdict(check(await mintLocalToken(dataDir, 'lethe-operator', 60)))).toBe('OK');
  });
});
