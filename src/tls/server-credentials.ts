import { ServerCredentials } from '@grpc/grpc-js';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { type SecureContextOptions, Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import type { ServerTlsConfig } from '../config/tls-config.js';
import { TlsFileWatcher } from './tls-file-watcher.js';
import { type KeyPair, checkCaBundle, checkKeyPair, describeCertificate, readTlsFile } from './tls-files.js';

/**
 * The server's TLS: credentials whose certificate follows the files on disk, and a count of the
 * handshakes it refuses.
 */

interface Material {
  readonly pair: KeyPair;
  readonly clientCa: Buffer | undefined;
}

/** Reads and checks the files: a ConfigError naming the file when one is missing, unreadable or does not fit. */
async function readMaterial(config: ServerTlsConfig): Promise<Material> {
  const [cert, key, clientCa] = await Promise.all([
    readTlsFile(config.certFile),
    readTlsFile(config.keyFile),
    config.clientCaFile === undefined ? undefined : readTlsFile(config.clientCaFile),
  ]);
  const pair = checkKeyPair(cert, config.certFile, key, config.keyFile);
  if (clientCa !== undefined && config.clientCaFile !== undefined) checkCaBundle(clientCa, config.clientCaFile);
  return { pair, clientCa };
}

const sameBytes = (a: Buffer | undefined, b: Buffer | undefined) => (a === undefined || b === undefined ? a === b : a.equals(b));
const sameMaterial = (a: Material, b: Material) =>
  sameBytes(a.pair.cert, b.pair.cert) && sameBytes(a.pair.key, b.pair.key) && sameBytes(a.clientCa, b.clientCa);

// setSecureContext replaces the whole context (a `ca` left out is dropped): every update carries all of it.
const contextOptions = (m: Material): SecureContextOptions => ({ cert: m.pair.cert, key: m.pair.key, ca: m.clientCa, minVersion: 'TLSv1.2' });

/**
 * grpc-js ServerCredentials that re-read the certificate, key and client CA every
 * `reloadIntervalMs` and hand a changed, valid set to the listening server
 * (`setSecureContext`): new connections get it, established connections and their calls keep the
 * one they were made with. grpc-js' own FileWatcherCertificateProvider is not used because it
 * publishes whatever it read — a key written a moment after its certificate, or a broken file,
 * makes the server drop every new connection until the next read — while these keep serving
 * the last good certificate and say which file is wrong.
 */
export class ReloadingServerCredentials extends ServerCredentials {
  private readonly files: TlsFileWatcher<Material>;

  private constructor(
    private readonly config: ServerTlsConfig,
    current: Material,
    logger: Logger,
  ) {
    const mtls = config.clientCaFile !== undefined;
    super({ requestCert: mtls, rejectUnauthorized: mtls, minVersion: 'TLSv1.2' }, contextOptions(current));
    this.files = new TlsFileWatcher(current, {
      read: () => readMaterial(config),
      same: sameMaterial,
      onChange: (next) => {
        this.updateSecureContextOptions(contextOptions(next));
        logger.info(
          { certificate: describeCertificate(next.pair.leaf), clientCa: next.clientCa !== undefined },
          'TLS certificate reloaded: new connections use it',
        );
      },
      intervalMs: config.reloadIntervalMs,
      logger,
      what: 'server certificate',
    });
  }

  /** Reads and checks the files once: start-up stops here, naming the file, when one is wrong. */
  static async load(config: ServerTlsConfig, logger: Logger): Promise<ReloadingServerCredentials> {
    return new ReloadingServerCredentials(config, await readMaterial(config), logger);
  }

  get certificate() {
    return describeCertificate(this.files.value.pair.leaf);
  }

  get mutualTls(): boolean {
    return this.config.clientCaFile !== undefined;
  }

  override _equals(other: ServerCredentials): boolean {
    return other === this;
  }

  // grpc-js adds a watcher per listening socket and removes it when that socket closes: the
  // files are polled exactly while something listens.
  override _addWatcher(watcher: Parameters<ServerCredentials['_addWatcher']>[0]): void {
    super._addWatcher(watcher);
    this.files.start();
  }

  override _removeWatcher(watcher: Parameters<ServerCredentials['_removeWatcher']>[0]): void {
    super._removeWatcher(watcher);
    if (this.getWatcherCount() === 0) this.close();
  }

  close(): void {
    this.files.stop();
  }

  /** Checks the files now; true when a new certificate was taken. */
  reload(): Promise<boolean> {
    return this.files.check();
  }
}

/** Why a handshake was refused: a bounded set, fit for a metric label; never the peer or its certificate. */
export type HandshakeFailureReason =
  'no_client_certificate' | 'untrusted_client_certificate' | 'certificate_rejected_by_client' | 'not_tls' | 'protocol_version' | 'aborted' | 'other';

/**
 * `socket` is the TLS socket the error came with. Node verifies a client certificate only after
 * OpenSSL's handshake and then destroys the socket, which surfaces as a "socket hang up" whose
 * socket carries the verification error: that is an untrusted certificate, not a client that left.
 */
export function handshakeFailureReason(err: unknown, socket?: { authorizationError?: unknown }): HandshakeFailureReason {
  if (socket?.authorizationError !== undefined && socket.authorizationError !== null) return 'untrusted_client_certificate';
  const code = String((err as { code?: unknown }).code ?? '');
  if (code.includes('PEER_DID_NOT_RETURN_A_CERTIFICATE')) return 'no_client_certificate';
  if (/CERTIFICATE_VERIFY_FAILED|UNABLE_TO_GET_ISSUER|SELF_SIGNED|CERT_NOT_YET_VALID|CERT_HAS_EXPIRED|UNABLE_TO_VERIFY/.test(code))
    return 'untrusted_client_certificate';
  if (/ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|CERTIFICATE_EXPIRED|DECRYPT_ERROR)/.test(code)) return 'certificate_rejected_by_client';
  if (/WRONG_VERSION_NUMBER|HTTP_REQUEST|UNKNOWN_PROTOCOL|PACKET_LENGTH_TOO_LONG/.test(code)) return 'not_tls';
  if (/UNSUPPORTED_PROTOCOL|VERSION_TOO_LOW|NO_PROTOCOLS_AVAILABLE|PROTOCOL_VERSION/.test(code)) return 'protocol_version';
  if (code === 'ECONNRESET' || code === 'ERR_TLS_HANDSHAKE_TIMEOUT' || code === 'EPIPE') return 'aborted';
  return 'other';
}

const SERVER_SOCKET_CHANNEL = 'net.server.socket';

/**
 * Calls `onFailure` for every TLS handshake refused by the TLS server listening on `port` in this
 * process. grpc-js creates its HTTP/2 servers privately and reports refused handshakes to
 * nobody; Node publishes every accepted socket on the `net.server.socket` diagnostics channel
 * before the TLS handshake begins, with its server, so the server's own `tlsClientError` event
 * is reachable without touching grpc-js internals. Returns the function that stops listening
 * for new servers.
 */
export function observeHandshakeFailures(port: number, onFailure: (reason: HandshakeFailureReason, code: string) => void): () => void {
  const attached = new WeakSet<TlsServer>();
  const onSocket = (message: unknown) => {
    const server = (message as { socket?: { server?: unknown } }).socket?.server;
    if (!(server instanceof TlsServer) || attached.has(server)) return;
    const address = server.address();
    if (address === null || typeof address === 'string' || address.port !== port) return;
    attached.add(server);
    server.on('tlsClientError', (err, socket: { authorizationError?: unknown }) => {
      const verifyError = socket.authorizationError;
      onFailure(handshakeFailureReason(err, socket), String(verifyError ?? (err as { code?: unknown }).code ?? 'unknown'));
    });
  };
  subscribe(SERVER_SOCKET_CHANNEL, onSocket);
  return () => unsubscribe(SERVER_SOCKET_CHANNEL, onSocket);
}

/**
 * The log line of a refused handshake: the reason and the TLS error code, never the peer's address
 * or certificate. A peer that just hangs up (a load balancer's or a port scanner's TCP check) is
 * counted but logged at debug only, so that such checks do not flood the log.
 */
export function logHandshakeFailure(logger: Logger, reason: HandshakeFailureReason, code: string): void {
  logger[reason === 'aborted' ? 'debug' : 'warn']({ reason, code }, 'TLS handshake refused');
}
