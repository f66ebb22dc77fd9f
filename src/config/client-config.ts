import { ConfigError } from '../errors.js';
import { type Env, defaultDataDir, parseListen } from './config.js';

/** What the client commands (export, forget, requests) need: where the server is and who calls. */
export interface ClientConfig {
  readonly server: string;
  /** A token from LETHE_TOKEN, used when --as is not given. */
  readonly token: string | undefined;
  readonly dataDir: string;
}

export function loadClientConfig(env: Env, flags: { server?: string | undefined; dataDir?: string | undefined }): Readonly<ClientConfig> {
  const server = flags.server ?? env.LETHE_SERVER ?? '127.0.0.1:50051';
  parseListen(server, flags.server !== undefined ? '--server' : 'LETHE_SERVER');
  const token = env.LETHE_TOKEN?.trim();
  if (token !== undefined && token.length > 0 && !/^[A-Za-z0-9._~+/=-]+$/.test(token)) {
    throw new ConfigError('is not a JWT (mint one with: lethe token --as <user-id>)', 'LETHE_TOKEN');
  }
  return Object.freeze({ server, token: token === '' ? undefined : token, dataDir: flags.dataDir ?? defaultDataDir(env) });
}
