import { type ChannelCredentials, credentials, experimental } from '@grpc/grpc-js';
import type { X509Certificate } from 'node:crypto';
import type { TlsOptions as NatsTlsOptions } from '@nats-io/nats-core';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { ClientTlsConfig, NatsTlsConfig } from '../config/tls-config.js';
import { ConfigError } from '../errors.js';
import { TlsFileWatcher } from './tls-file-watcher.js';
import { checkCaBundle, checkKeyPair, describeCertificate, readTlsFile, readTlsFileSync } from './tls-files.js';

/**
 * The one place clients build their TLS: the CLI's client commands and the operator dial the
 * PrivacyService through `channelCredentials`, the server and the sidecar reach NATS with
 * `natsTlsOptions`. TLS 1.2 at least, the server's certificate always verified.
 */

const MIN_VERSION = 'TLSv1.2';

interface ClientMaterial {
  readonly ca: Buffer;
  readonly identity: { readonly cert: Buffer; readonly key: Buffer; readonly leaf: X509Certificate } | undefined;
}

function checkMaterial(tls: ClientTlsConfig, ca: Buffer, cert: Buffer | undefined, key: Buffer | undefined): ClientMaterial {
  checkCaBundle(ca, tls.caFile);
  if (cert === undefined || key === undefined || tls.certFile === undefined || tls.keyFile === undefined) return { ca, identity: undefined };
  const pair = checkKeyPair(cert, tls.certFile, key, tls.keyFile);
  return { ca, identity: pair };
}

const readMaterialSync = (tls: ClientTlsConfig): ClientMaterial =>
  checkMaterial(
    tls,
    readTlsFileSync(tls.caFile),
    tls.certFile === undefined ? undefined : readTlsFileSync(tls.certFile),
    tls.keyFile === undefined ? undefined : readTlsFileSync(tls.keyFile),
  );

async function readMaterial(tls: ClientTlsConfig): Promise<ClientMaterial> {
  const [ca, cert, key] = await Promise.all([
    readTlsFile(tls.caFile),
    tls.certFile === undefined ? undefined : readTlsFile(tls.certFile),
    tls.keyFile === undefined ? undefined : readTlsFile(tls.keyFile),
  ]);
  return checkMaterial(tls, ca, cert, key);
}

const sameMaterial = (a: ClientMaterial, b: ClientMaterial) =>
  a.ca.equals(b.ca) &&
  (a.identity === undefined || b.identity === undefined
    ? a.identity === b.identity
    : a.identity.cert.equals(b.identity.cert) && a.identity.key.equals(b.identity.key));

/**
 * gRPC channel credentials: TLS with the configured CA (and client certificate), or plaintext
 * when unset. A bad file throws a ConfigError naming it. With `reload`, for a long-running
 * client (the operator), the files are read again every `intervalMs` and new connections use
 * what they hold then (cert-manager renews the operator's certificate in place); grpc-js builds
 * the TLS context per connection from a certificate provider, with Node's minimum, TLS 1.2.
 */
export function channelCredentials(tls: ClientTlsConfig | undefined, reload?: { intervalMs: number; logger: Logger }): ChannelCredentials {
  if (tls === undefined) return credentials.createInsecure();
  const material = readMaterialSync(tls);
  if (reload !== undefined) {
    const provider = new FileCertificateProvider(tls, material, reload.intervalMs, reload.logger);
    return experimental.createCertificateProviderChannelCredentials(provider, material.identity === undefined ? null : provider);
  }
  try {
    return credentials.createFromSecureContext(
      createSecureContext({ ca: material.ca, cert: material.identity?.cert, key: material.identity?.key, minVersion: MIN_VERSION }),
    );
  } catch (err) {
    throw new ConfigError('cannot be used for TLS (OpenSSL refused it)', tls.caFile, { cause: err });
  }
}

/** grpc-js' CertificateProvider over files that are checked every interval while a channel uses them. */
class FileCertificateProvider implements experimental.CertificateProvider {
  private readonly caListeners = new Set<experimental.CaCertificateUpdateListener>();
  private readonly identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();
  private readonly files: TlsFileWatcher<ClientMaterial>;

  constructor(tls: ClientTlsConfig, initial: ClientMaterial, intervalMs: number, logger: Logger) {
    this.files = new TlsFileWatcher(initial, {
      read: () => readMaterial(tls),
      same: sameMaterial,
      onChange: (next) => {
        for (const l of this.caListeners) l({ caCertificate: next.ca });
        for (const l of this.identityListeners) l(FileCertificateProvider.identityOf(next));
        logger.info(
          { clientCertificate: next.identity === undefined ? undefined : describeCertificate(next.identity.leaf) },
          'TLS client files reloaded: new connections use them',
        );
      },
      intervalMs,
      logger,
      what: 'client certificate and CA',
    });
  }

  private static identityOf(m: ClientMaterial): experimental.IdentityCertificateUpdate | null {
    return m.identity === undefined ? null : { certificate: m.identity.cert, privateKey: m.identity.key };
  }

  addCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(listener);
    this.files.start();
    process.nextTick(listener, { caCertificate: this.files.value.ca });
  }

  removeCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(listener);
    this.stopWhenUnused();
  }

  addIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.add(listener);
    this.files.start();
    process.nextTick(listener, FileCertificateProvider.identityOf(this.files.value));
  }

  removeIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.delete(listener);
    this.stopWhenUnused();
  }

  private stopWhenUnused(): void {
    if (this.caListeners.size === 0 && this.identityListeners.size === 0) this.files.stop();
  }
}

/**
 * Options for the NATS client (`@nats-io/transport-node`), which reads the files itself on every
 * (re)connection, so rotated files are picked up without a restart. Checked here first, so a
 * wrong path stops start-up instead of failing every reconnection.
 */
export function natsTlsOptions(tls: NatsTlsConfig | undefined): NatsTlsOptions | undefined {
  if (tls === undefined) return undefined;
  if (tls.caFile !== undefined) checkCaBundle(readTlsFileSync(tls.caFile), tls.caFile);
  if (tls.certFile !== undefined && tls.keyFile !== undefined)
    checkKeyPair(readTlsFileSync(tls.certFile), tls.certFile, readTlsFileSync(tls.keyFile), tls.keyFile);
  // Passed through to tls.connect by the Node transport.
  const options: NatsTlsOptions & { minVersion: typeof MIN_VERSION } = { minVersion: MIN_VERSION };
  if (tls.caFile !== undefined) options.caFile = tls.caFile;
  if (tls.certFile !== undefined) options.certFile = tls.certFile;
  if (tls.keyFile !== undefined) options.keyFile = tls.keyFile;
  return options;
}
