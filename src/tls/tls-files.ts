import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { ConfigError } from '../errors.js';

/**
 * Certificate, key and CA files, read and checked. Every problem names the file and says what is
 * wrong with it, never what is in it (a key file's bytes are a secret; OpenSSL's messages can
 * quote them), so messages are ours, not the library's.
 */

export interface KeyPair {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** The leaf certificate (the first of the chain). */
  readonly leaf: X509Certificate;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function unreadable(err: unknown, file: string): ConfigError {
  const code = (err as { code?: unknown }).code;
  const why =
    code === 'ENOENT'
      ? 'does not exist'
      : code === 'EACCES' || code === 'EPERM'
        ? 'cannot be read (permission denied)'
        : code === 'EISDIR'
          ? 'is a directory, not a file'
          : `cannot be read (${typeof code === 'string' ? code : 'I/O error'})`;
  return new ConfigError(why, file, { cause: err });
}

export async function readTlsFile(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw unreadable(err, file);
  }
}

export function readTlsFileSync(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw unreadable(err, file);
  }
}

/** Every PEM certificate in a file (a chain or a CA bundle); at least one. */
function parseCertificates(pem: Buffer, file: string): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERT) ?? [];
  if (blocks.length === 0) throw new ConfigError('holds no PEM certificate (-----BEGIN CERTIFICATE-----)', file);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new ConfigError(`certificate ${i + 1} is not a valid X.509 certificate`, file, { cause: err });
    }
  });
}

/** A certificate (chain) and the private key that goes with its leaf. */
export function checkKeyPair(cert: Buffer, certFile: string, key: Buffer, keyFile: string): KeyPair {
  const leaf = parseCertificates(cert, certFile)[0] as X509Certificate;
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new ConfigError('is not a PEM private key (or it is encrypted: Lethe needs it unencrypted)', keyFile, { cause: err });
  }
  if (!leaf.checkPrivateKey(privateKey)) throw new ConfigError(`is not the private key of the certificate in ${certFile} (they do not match)`, keyFile);
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new ConfigError(`cannot be used with the key in ${keyFile} (OpenSSL refused the pair)`, certFile, { cause: err });
  }
  return { cert, key, leaf };
}

/** A CA bundle: PEM certificates that OpenSSL accepts as trust anchors. */
export function checkCaBundle(ca: Buffer, file: string): X509Certificate[] {
  const certs = parseCertificates(ca, file);
  try {
    createSecureContext({ ca });
  } catch (err) {
    throw new ConfigError('cannot be used as a CA bundle (OpenSSL refused it)', file, { cause: err });
  }
  return certs;
}

/** What may be logged about a certificate: no subject (it could name a person in a client certificate). */
export function describeCertificate(c: X509Certificate): { serial: string; notAfter: string; sha256: string } {
  return { serial: c.serialNumber, notAfter: new Date(c.validTo).toISOString(), sha256: c.fingerprint256 };
}
