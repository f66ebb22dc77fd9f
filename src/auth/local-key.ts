import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type JWK, SignJWT, exportJWK, generateKeyPair, importJWK } from 'jose';
import { ConfigError } from '../errors.js';
import { LOCAL_AUDIENCE, LOCAL_ISSUER } from '../config/config.js';

/**
 * The embedded default's signing key, kept in the data directory the way a local cluster tool
 * keeps an admin kubeconfig: `lethe serve` creates it, `lethe token` mints with it. A server
 * configured with a JWKS URL or a public key never reads it.
 */

const ALG = 'ES256';
const FILE = 'signing-key.jwk.json';

export function localKeyPath(dataDir: string): string {
  return join(dataDir, FILE);
}

/** Loads the data directory's key pair, creating it on first use. */
export async function ensureLocalKey(dataDir: string): Promise<{ privateJwk: JWK; publicJwk: JWK }> {
  try {
    return await loadLocalKey(dataDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const { privateKey } = await generateKeyPair(ALG, { extractable: true });
  const privateJwk = { ...(await exportJWK(privateKey)), alg: ALG, kid: `lethe-local-${Date.now()}` };
  const path = localKeyPath(dataDir);
  await writeFile(path, `${JSON.stringify(privateJwk)}\n`, { mode: 0o600, flag: 'wx' }).catch(async (err: NodeJS.ErrnoException) => {
    // Another process created it first: use theirs.
    if (err.code !== 'EEXIST') throw err;
  });
  await chmod(path, 0o600);
  return loadLocalKey(dataDir);
}

async function loadLocalKey(dataDir: string): Promise<{ privateJwk: JWK; publicJwk: JWK }> {
  const text = await readFile(localKeyPath(dataDir), 'utf8');
  const privateJwk = JSON.parse(text) as JWK;
  const { d: _d, ...publicJwk } = privateJwk;
  return { privateJwk, publicJwk };
}

/** Mints a token for `subject` with the data directory's key. */
export async function mintLocalToken(dataDir: string, subject: string, ttlSeconds: number): Promise<string> {
  let key: { privateJwk: JWK };
  try {
    key = await loadLocalKey(dataDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new ConfigError(`no local signing key at ${localKeyPath(dataDir)}: start \`lethe serve\` first, or pass the --data-dir it uses`, '--data-dir');
    }
    throw err;
  }
  const privateKey = await importJWK(key.privateJwk, ALG);
  return new SignJWT({})
    .setProtectedHeader({ alg: ALG, kid: key.privateJwk.kid ?? 'lethe-local', typ: 'JWT' })
    .setSubject(subject)
    .setIssuer(LOCAL_ISSUER)
    .setAudience(LOCAL_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(`${ttlSeconds}s`)
    .sign(privateKey);
}
