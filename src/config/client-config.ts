import { ConfigError } from '../errors.js';
import { type Env, defaultDataDir, parseListen } from './config.js';
import { type ClientTlsConfig, type ClientTlsFlags, clientTls } from './tls-config.js';

/** What the client commands (export, forget, requests) need: where the server is and who calls. */
export interface ClientConfig {
  readonly server: string;
  /** A token from LETHE_TOKEN, used when --as is not given. */
  readonly token: string | undefined;
  readonly dataDir: string;
  /** Unset: plaintext (the local demo). */
  readonly tls: ClientTlsConfig | undefined;
}

export interface ClientFlags extends ClientTlsFlags {
  readonly server?: string | undefined;
  readonly dataDir?: string | undefined;
}

export function loadClientConfig(env: Env, flags: ClientFlags): Readonly<ClientConfig> {
  const server = flags.server ?? env.LETHE_SERVER ?? '127.0.0.1:50051';
  parseListen(server, flags.server !== undefined ? '--server' : 'LETHE_SERVER');
  const token = env.LETHE_TOKEN?.trim();
  if (token !== undefined && token.length > 0 && !/^[A-Za-z0-9._~+/=-]+$/.test(token)) {
    throw new ConfigError('is not a JWT (mint one with: lethe token --as <user-id>)', 'LETHE_TOKEN');
  }
  return Object.freeze({ server, token: token === '' ? undefined : token, dataDir: flags.dataDir ?? defaultDataDir(env), tls: clientTls(env, flags) });
}
