import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The control plane's throwaway PKI (a CA, the API server's certificate, an admin client
 * certificate in system:masters, the service-account signing key pair) made with openssl, since
 * node:crypto cannot issue X.509 certificates; and kubeconfigs for it.
 */

export interface Pki {
  readonly caCertPath: string;
  readonly caCert: string;
  readonly serverCertPath: string;
  readonly serverKeyPath: string;
  readonly adminCert: string;
  readonly adminKey: string;
  readonly saPrivateKeyPath: string;
  readonly saPublicKeyPath: string;
}

export function makePki(pkiDir: string): Pki {
  mkdirSync(pkiDir, { recursive: true, mode: 0o700 });
  const p = (f: string) => join(pkiDir, f);
  const openssl = (args: string[]) => {
    try {
      execFileSync('openssl', args, { cwd: pkiDir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
    } catch (err) {
      const e = err as { code?: string; stderr?: Buffer };
      if (e.code === 'ENOENT')
        throw new Error('openssl not found: the Kubernetes harness issues its certificates with it (apt-get install -y openssl)', { cause: err });
      throw new Error(`openssl ${args.join(' ')}: ${e.stderr?.toString() ?? String(err)}`, { cause: err });
    }
  };
  const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

  writeFileSync(
    p('openssl.cnf'),
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      '[dn]',
      'CN = lethe-test',
      '[ca]',
      'basicConstraints = critical,CA:TRUE',
      'keyUsage = critical,keyCertSign,cRLSign,digitalSignature',
      'subjectKeyIdentifier = hash',
      '[server]',
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage = serverAuth',
      'authorityKeyIdentifier = keyid',
      'subjectAltName = IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1',
      '[client]',
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage = clientAuth',
      'authorityKeyIdentifier = keyid',
      '',
    ].join('\n'),
  );
  openssl([
    'req',
    '-x509',
    ...ecKey,
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '7',
    '-config',
    'openssl.cnf',
    '-extensions',
    'ca',
    '-subj',
    '/CN=lethe-test-ca',
  ]);
  const issue = (name: string, subject: string, extensions: string) => {
    openssl(['req', '-new', ...ecKey, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-config', 'openssl.cnf', '-subj', subject]);
    openssl([
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-set_serial',
      `0x${randomBytes(8).toString('hex')}`,
      '-days',
      '7',
      '-extfile',
      'openssl.cnf',
      '-extensions',
      extensions,
      '-out',
      `${name}.crt`,
    ]);
  };
  issue('server', '/CN=kube-apiserver', 'server');
  issue('admin', '/O=system:masters/CN=lethe-admin', 'client');

  // RS256, the algorithm clusters usually sign service-account tokens with.
  const sa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(p('sa.key'), sa.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  writeFileSync(p('sa.pub'), sa.publicKey.export({ type: 'spki', format: 'pem' }));

  return {
    caCertPath: p('ca.crt'),
    caCert: readFileSync(p('ca.crt'), 'utf8'),
    serverCertPath: p('server.crt'),
    serverKeyPath: p('server.key'),
    adminCert: readFileSync(p('admin.crt'), 'utf8'),
    adminKey: readFileSync(p('admin.key'), 'utf8'),
    saPrivateKeyPath: p('sa.key'),
    saPublicKeyPath: p('sa.pub'),
  };
}

export type KubeUser = { readonly cert: string; readonly key: string } | { readonly token: string };

export function renderKubeconfig(url: string, ca: string, user: KubeUser): string {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const credentials =
    'token' in user ? [`    token: ${user.token}`] : [`    client-certificate-data: ${b64(user.cert)}`, `    client-key-data: ${b64(user.key)}`];
  return [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: lethe-test',
    '  cluster:',
    `    server: ${url}`,
    `    certificate-authority-data: ${b64(ca)}`,
    'users:',
    '- name: lethe-user',
    '  user:',
    ...credentials,
    'contexts:',
    '- name: lethe-test',
    '  context:',
    '    cluster: lethe-test',
    '    user: lethe-user',
    'current-context: lethe-test',
    '',
  ].join('\n');
}
