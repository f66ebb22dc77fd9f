import { ChannelCredentials, credentials } from '@grpc/grpc-js';
import type { TlsOptions as NatsTlsOptions } from '@nats-io/nats-core';
import { createSecureContext } from 'node:tls';
import type { ClientTlsConfig, NatsTlsConfig } from '../config/tls-config.js';
import { ConfigError } from '../errors.js';
import { checkCaBundle, checkKeyPair, readTlsFileSync } from './tls-files.js';

/**
 * The one place clients build their TLS: the CLI's client commands and the operator dial the
 * PrivacyService through `channelCredentials`, the server and the sidecar reach NATS with
 * `natsTlsOptions`. TLS 1.2 at least, the server's certificate always verified.
 */

const MIN_VERSION = 'TLSv1.2';

/** gRPC channel credentials: TLS with the configured CA (and client certificate), or plaintext when unset. */
export function channelCredentials(tls: ClientTlsConfig | undefined): ChannelCredentials {
  if (tls === undefined) return credentials.createInsecure();
  const ca = readTlsFileSync(tls.caFile);
  checkCaBundle(ca, tls.caFile);
  let identity: { cert: Buffer; key: Buffer } | undefined;
  if (tls.certFile !== undefined && tls.keyFile !== undefined) {
    identity = checkKeyPair(readTlsFileSync(tls.certFile), tls.certFile, readTlsFileSync(tls.keyFile), tls.keyFile);
  }
  try {
    return credentials.createFromSecureContext(createSecureContext({ ca, cert: identity?.cert, key: identity?.key, minVersion: MIN_VERSION }));
  } catch (err) {
    throw new ConfigError('cannot be used for TLS (OpenSSL refused it)', tls.caFile, { cause: err });
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
  if (tls.certFile !== undefined && tls.keyFile !== undefined) checkKeyPair(readTlsFileSync(tls.certFile), tls.certFile, readTlsFileSync(tls.keyFile), tls.keyFile);
  // Passed through to tls.connect by the Node transport.
  const options: NatsTlsOptions & { minVersion: typeof MIN_VERSION } = { minVersion: MIN_VERSION };
  if (tls.caFile !== undefined) options.caFile = tls.caFile;
  if (tls.certFile !== undefined) options.certFile = tls.certFile;
  if (tls.keyFile !== undefined) options.keyFile = tls.keyFile;
  return options;
}
