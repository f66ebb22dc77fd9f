import { resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import type { Env } from './common.js';

/**
 * TLS settings of every front, read once at start-up. Only file paths live here: the files
 * themselves are read and checked by src/tls (the server re-reads its own as they rotate).
 */

/** `lethe serve`: its certificate, and the CA client certificates must chain to (mTLS). */
export interface ServerTlsConfig {
  readonly certFile: string;
  readonly keyFile: string;
  /** Set: every client must present a certificate signed by this CA (mTLS). */
  readonly clientCaFile: string | undefined;
  /** How often the files are checked for a new certificate (cert-manager rewrites them in place). */
  readonly reloadIntervalMs: number;
}

/** A client of the PrivacyService (CLI, operator): the CA it trusts, and its own certificate for mTLS. */
export interface ClientTlsConfig {
  readonly caFile: string;
  readonly certFile: string | undefined;
  readonly keyFile: string | undefined;
  /** The name the server's certificate must carry, when it is not the host dialled (a port-forward, an IP). */
  readonly serverName?: string | undefined;
}

/** NATS over TLS: the CA (unset: the system's roots) and an optional client certificate. */
export interface NatsTlsConfig {
  readonly caFile: string | undefined;
  readonly certFile: string | undefined;
  readonly keyFile: string | undefined;
}

const nonEmpty = (v: string | undefined): string | undefined => (v === undefined || v.trim() === '' ? undefined : v.trim());

interface Setting {
  readonly value: string | undefined;
  /** The flag or variable it came from, for messages. */
  readonly source: string;
}

/** A flag wins over its environment variable; without flags (`flagName` undefined) only the variable counts. */
function setting(flag: string | undefined, flagName: string | undefined, env: Env, envName: string): Setting {
  const fromFlag = nonEmpty(flag);
  if (fromFlag !== undefined && flagName !== undefined) return { value: fromFlag, source: flagName };
  const value = nonEmpty(env[envName]);
  // Unset, it is named both ways: either would do.
  return { value, source: value !== undefined || flagName === undefined ? envName : `${flagName} (${envName})` };
}

function pair(cert: Setting, key: Setting, what: string): { certFile: string; keyFile: string } | undefined {
  if (cert.value === undefined && key.value === undefined) return undefined;
  if (cert.value === undefined) throw new ConfigError(`is set but ${cert.source} is not: ${what} needs both the certificate and its private key`, key.source);
  if (key.value === undefined) throw new ConfigError(`is set but ${key.source} is not: ${what} needs both the certificate and its private key`, cert.source);
  return { certFile: resolve(cert.value), keyFile: resolve(key.value) };
}

export interface ServerTlsFlags {
  readonly tlsCert?: string | undefined;
  readonly tlsKey?: string | undefined;
  readonly tlsClientCa?: string | undefined;
}

/** `--tls-cert`/`--tls-key` (LETHE_TLS_CERT/KEY) turn TLS on; `--tls-client-ca` (LETHE_TLS_CLIENT_CA) adds mTLS. */
export function serverTls(env: Env, flags: ServerTlsFlags, reloadIntervalMs: number): ServerTlsConfig | undefined {
  const cert = setting(flags.tlsCert, '--tls-cert', env, 'LETHE_TLS_CERT');
  const key = setting(flags.tlsKey, '--tls-key', env, 'LETHE_TLS_KEY');
  const clientCa = setting(flags.tlsClientCa, '--tls-client-ca', env, 'LETHE_TLS_CLIENT_CA');
  const files = pair(cert, key, 'serving TLS');
  if (files === undefined) {
    if (clientCa.value !== undefined) throw new ConfigError('requires TLS: set --tls-cert and --tls-key (LETHE_TLS_CERT, LETHE_TLS_KEY) too', clientCa.source);
    return undefined;
  }
  return Object.freeze({ ...files, clientCaFile: clientCa.value === undefined ? undefined : resolve(clientCa.value), reloadIntervalMs });
}

export interface ClientTlsFlags {
  readonly tlsCa?: string | undefined;
  readonly tlsCert?: string | undefined;
  readonly tlsKey?: string | undefined;
  readonly tlsServerName?: string | undefined;
}

/**
 * A client speaks TLS exactly when it is given a CA to trust (`--tls-ca`, LETHE_TLS_CA); a client
 * certificate (`--tls-cert`/`--tls-key`) is only sent over TLS, so it requires the CA too.
 */
export function clientTls(env: Env, flags?: ClientTlsFlags): ClientTlsConfig | undefined {
  const withFlags = flags !== undefined;
  const ca = setting(flags?.tlsCa, withFlags ? '--tls-ca' : undefined, env, 'LETHE_TLS_CA');
  const cert = setting(flags?.tlsCert, withFlags ? '--tls-cert' : undefined, env, 'LETHE_TLS_CERT');
  const key = setting(flags?.tlsKey, withFlags ? '--tls-key' : undefined, env, 'LETHE_TLS_KEY');
  const serverName = setting(flags?.tlsServerName, withFlags ? '--tls-server-name' : undefined, env, 'LETHE_TLS_SERVER_NAME');
  const files = pair(cert, key, 'a client certificate');
  if (ca.value === undefined) {
    if (files !== undefined)
      throw new ConfigError(
        `is set but ${ca.source} is not: a client certificate is sent over TLS only; set the CA that signed the server's certificate`,
        cert.source,
      );
    if (serverName.value !== undefined)
      throw new ConfigError(`is set but ${ca.source} is not: set the CA that signed the server's certificate`, serverName.source);
    return undefined;
  }
  if (serverName.value !== undefined && !/^[A-Za-z0-9.*-]{1,253}$/.test(serverName.value)) throw new ConfigError('must be a DNS name', serverName.source);
  return Object.freeze({ caFile: resolve(ca.value), certFile: files?.certFile, keyFile: files?.keyFile, serverName: serverName.value });
}

/**
 * NATS over TLS: a `tls://` URL or LETHE_NATS_TLS_CA turns it on. Its own variables, not
 * LETHE_TLS_*: the server's LETHE_TLS_CERT is its serving certificate, and NATS often has its own CA.
 */
export function natsTls(env: Env, natsUrl: string | undefined): NatsTlsConfig | undefined {
  const ca = nonEmpty(env.LETHE_NATS_TLS_CA);
  const files = pair(
    { value: nonEmpty(env.LETHE_NATS_TLS_CERT), source: 'LETHE_NATS_TLS_CERT' },
    { value: nonEmpty(env.LETHE_NATS_TLS_KEY), source: 'LETHE_NATS_TLS_KEY' },
    'a NATS client certificate',
  );
  const tlsUrl = natsUrl !== undefined && natsUrl.split(',').some((u) => u.trim().startsWith('tls://'));
  if (ca === undefined && files === undefined && !tlsUrl) return undefined;
  if (natsUrl === undefined) throw new ConfigError('is set but LETHE_NATS_URL is not', ca !== undefined ? 'LETHE_NATS_TLS_CA' : 'LETHE_NATS_TLS_CERT');
  return Object.freeze({ caFile: ca === undefined ? undefined : resolve(ca), certFile: files?.certFile, keyFile: files?.keyFile });
}

const SSLMODES = new Set(['disable', 'prefer', 'require', 'verify-ca', 'verify-full', 'no-verify']);

/**
 * The TLS parameters of a DATABASE_URL, checked before node-postgres reads them: a misspelt
 * sslmode would otherwise be ignored, and a missing sslrootcert fail on the first query.
 * (node-postgres verifies the server's certificate and host name for every sslmode but
 * `no-verify`; `verify-full` with `sslrootcert` is what to use.)
 */
export function checkPostgresTls(url: string, source: string): void {
  let params: URLSearchParams;
  try {
    params = new URL(url).searchParams;
  } catch {
    return; // the URL's own check reports it
  }
  const mode = params.get('sslmode');
  if (mode !== null && !SSLMODES.has(mode)) throw new ConfigError(`sslmode '${mode}' is not one of ${[...SSLMODES].join(', ')}`, source);
  if (mode === 'no-verify')
    throw new ConfigError("sslmode=no-verify accepts any certificate, including an attacker's: use sslmode=verify-full&sslrootcert=<CA file>", source);
}
