import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Throwaway certificates for the TLS tests, made with the machine's openssl (P-256 keys, valid
 * for two days): a CA, and leaf certificates it signs for servers and clients. openssl missing:
 * an error (every CI machine with PostgreSQL has it).
 */

export interface CertFiles {
  readonly certFile: string;
  readonly keyFile: string;
  /** The serial number, upper-case hex as node:crypto's X509Certificate reports it. */
  readonly serial: string;
}

export interface TestCa extends CertFiles {
  /** Signs a certificate for a server (`dns`, `ips` as subjectAltNames) or a client. */
  issue(name: string, options: { cn: string; dns?: string[]; ips?: string[]; client?: boolean }): CertFiles;
}

function openssl(args: string[]): void {
  execFileSync(findOpenssl(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export function findOpenssl(): string {
  const found = ['/usr/bin/openssl', '/usr/local/bin/openssl'].find((p) => existsSync(p));
  if (found !== undefined) return found;
  try {
    return execFileSync('sh', ['-c', 'command -v openssl'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('openssl not found: apt-get install -y openssl (the TLS tests make their certificates with it)');
  }
}

/** A random positive serial without a leading zero nibble, so its hex form round-trips exactly. */
function newSerial(): string {
  const bytes = randomBytes(9);
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x10;
  return bytes.toString('hex').toUpperCase();
}

const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

export function createTestCa(dir: string, name: string): TestCa {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  const serial = newSerial();
  openssl([
    'req',
    '-x509',
    ...KEY_ARGS,
    '-keyout',
    keyFile,
    '-out',
    certFile,
    '-days',
    '2',
    '-set_serial',
    `0x${serial}`,
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return {
    certFile,
    keyFile,
    serial,
    issue(leaf, options) {
      const leafCert = join(dir, `${leaf}.crt`);
      const leafKey = join(dir, `${leaf}.key`);
      const csr = join(dir, `${leaf}.csr`);
      const ext = join(dir, `${leaf}.ext`);
      const sans = [...(options.dns ?? []).map((d) => `DNS:${d}`), ...(options.ips ?? []).map((ip) => `IP:${ip}`)];
      writeFileSync(
        ext,
        [
          'basicConstraints=critical,CA:FALSE',
          'keyUsage=critical,digitalSignature',
          `extendedKeyUsage=${options.client === true ? 'clientAuth' : 'serverAuth'}`,
          ...(sans.length > 0 ? [`subjectAltName=${sans.join(',')}`] : []),
        ].join('\n'),
      );
      const leafSerial = newSerial();
      openssl(['req', ...KEY_ARGS, '-keyout', leafKey, '-out', csr, '-subj', `/CN=${options.cn}`]);
      openssl([
        'x509',
        '-req',
        '-in',
        csr,
        '-CA',
        certFile,
        '-CAkey',
        keyFile,
        '-set_serial',
        `0x${leafSerial}`,
        '-days',
        '2',
        '-out',
        leafCert,
        '-extfile',
        ext,
      ]);
      return { certFile: leafCert, keyFile: leafKey, serial: leafSerial };
    },
  };
}
