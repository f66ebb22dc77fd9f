import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { type PrivacyClient, connectPrivacyService } from '../../src/client/privacy-client.js';
import { loadServerConfig } from '../../src/config/config.js';
import { type RunningServer, startLetheServer } from '../../src/server/lethe-server.js';
import { silentLogger } from './engine-fixture.js';

export interface TestServer {
  readonly address: string;
  readonly dataDir: string;
  readonly server: RunningServer;
  /** A client acting as `userId`, with a token from the server's local key. */
  clientAs(userId: string): Promise<PrivacyClient>;
  clientWithToken(token: string): PrivacyClient;
  stop(): Promise<void>;
}

/** The whole server in-process on a free loopback port, with its own data directory. */
export async function startTestServer(env: Record<string, string | undefined>): Promise<TestServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-test-'));
  // With DATABASE_URL the server requires LETHE_ARTIFACT_KEY (replicas share it).
  const artifactKey = env.DATABASE_URL !== undefined ? { LETHE_ARTIFACT_KEY: randomBytes(32).toString('hex') } : {};
  const config = loadServerConfig(
    { LETHE_LOG_LEVEL: 'silent', ...artifactKey, ...env },
    { demo: true, listen: '127.0.0.1:0', httpListen: '127.0.0.1:0', dataDir },
  );
  const server = await startLetheServer(config, silentLogger);
  const address = `127.0.0.1:${server.port}`;
  const channels: Array<() => void> = [];
  const clientWithToken = (token: string) => {
    const { client, close } = connectPrivacyService(address, token);
    channels.push(close);
    return client;
  };
  return {
    address,
    dataDir,
    server,
    clientWithToken,
    async clientAs(userId) {
      return clientWithToken(await mintLocalToken(dataDir, userId, 300));
    },
    async stop() {
      for (const close of channels) close();
      await server.stop(1_000);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
