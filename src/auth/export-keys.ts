import { createPublicKey } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type CryptoKey, exportPKCS8, generateKeyPair, importPKCS8, importSPKI } from 'jose';
import { ConfigError } from '../errors.js';

/**
 * The server's export key (Ed25519): the server signs its export requests to the sidecars with
 * the private key, and each sidecar answers only requests that verify with the public key.
 * PEM files, as `openssl genpkey -algorithm ed25519` writes them.
 */

const ALG = 'EdDSA';
const PRIVATE_FILE = 'export-signing-key.pem';
const PUBLIC_FILE = 'export-signing-key.pub.pem';

/** The signing key from a PKCS#8 PEM file; `setting` names where the path came from. */
export async function loadExportSigningKey(path: string, setting: string): Promise<CryptoKey> {
  const pem = await readPem(path, setting);
  try {
    return await importPKCS8(pem, ALG);
  } catch (err) {
    throw new ConfigError(`${path} is not an Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519 -out ${PRIVATE_FILE})`, setting, {
      cause: err,
    });
  }
}

/** The sidecar's verification key from an SPKI PEM file. */
export async function loadExportVerifyKey(path: string, setting: string): Promise<CryptoKey> {
  const pem = await readPem(path, setting);
  try {
    return await importSPKI(pem, ALG);
  } catch (err) {
    throw new ConfigError(`${path} is not an Ed25519 public key in PEM (openssl pkey -in ${PRIVATE_FILE} -pubout)`, setting, { cause: err });
  }
}

/**
 * The embedded default's key pair in the data directory, made on first use; the public half is
 * written beside it for the sidecars (LETHE_EXPORT_VERIFY_KEY_FILE).
 */
export async function ensureLocalExportKey(dataDir: string): Promise<{ signingKey: CryptoKey; publicKeyFile: string }> {
  const privatePath = join(dataDir, PRIVATE_FILE);
  const publicPath = join(dataDir, PUBLIC_FILE);
  const pem = await readFile(privatePath, 'utf8').catch(async (err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const { privateKey } = await generateKeyPair(ALG, { crv: 'Ed25519', extractable: true });
    await writeFile(privatePath, await exportPKCS8(privateKey), { mode: 0o600, flag: 'wx' }).catch((e: NodeJS.ErrnoException) => {
      // Another process made it first: use theirs.
      if (e.code !== 'EEXIST') throw e;
    });
    return readFile(privatePath, 'utf8');
  });
  await writeFile(publicPath, createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString(), { mode: 0o644 });
  return { signingKey: await loadExportSigningKey(privatePath, '--data-dir'), publicKeyFile: publicPath };
}

async function readPem(path: string, setting: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, setting, { cause: err });
  }
}
