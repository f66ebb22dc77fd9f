import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { promisify } from 'node:util';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { connectPrivacyService } from '../../src/client/privacy-client.js';
import { loadServerConfig } from '../../src/config/config.js';
import type { ClientTlsConfig } from '../../src/config/tls-config.js';
import { type RunningServer, startLetheServer } from '../../src/server/lethe-server.js';
import { type CapturedLogger, capturingLogger } from './logs.js';
import { sample, scrape } from './prometheus.js';

/**
 * What the TLS tests (test/integration/tls-grpc*.test.ts) need around a running server: the server
 * itself with a logger they can read, an export over a given TLS configuration, the handshake
 * failures it counted, and the certificate a new connection sees.
 */

/** The built CLI (bin/lethe.js), and a way to run it to the end. */
export const LETHE = join(process.cwd(), 'bin', 'lethe.js');
export const run = promisify(execFile);

export interface Running {
  readonly server: RunningServer;
  readonly dataDir: string;
  readonly log: CapturedLogger;
  readonly address: string;
}

export async function startTlsServer(env: Record<string, string>, flags: { tlsCert: string; tlsKey: string; tlsClientCa?: string }): Promise<Running> {
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-tls-'));
  const config = loadServerConfig(
    { LETHE_METRICS_LISTEN: '127.0.0.1:0', ...env },
    { demo: true, listen: '127.0.0.1:0', httpListen: '127.0.0.1:0', dataDir, ...flags },
  );
  const log = capturingLogger();
  const server = await startLetheServer(config, log.logger);
  return { server, dataDir, log, address: `127.0.0.1:${server.port}` };
}

export async function exportAs(r: Running, tls: ClientTlsConfig | undefined, user = 'user-id-123') {
  const { client, close } = connectPrivacyService(r.address, await mintLocalToken(r.dataDir, user, 60), tls);
  try {
    let records = 0;
    for await (const m of client.exportUser({ userId: user, reason: '' })) if (m.part?.$case === 'batch') records += m.part.value.records.length;
    return records;
  } finally {
    close();
  }
}

export const failures = async (r: Running, reason: string) =>
  sample((await scrape(r.server.metricsPort ?? 0)).body, 'lethe_tls_handshake_failures_total', { reason }) ?? 0;

export interface PeerOptions {
  readonly caFile: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly servername?: string;
}

/** Opens a new TLS connection (ALPN h2, as gRPC clients do) and returns the serial of the certificate the server presented. */
export function peerCertificateSerial(port: number, o: PeerOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(
      {
        host: '127.0.0.1',
        port,
        servername: o.servername ?? 'localhost',
        ca: readFileSync(o.caFile),
        cert: o.certFile === undefined ? undefined : readFileSync(o.certFile),
        key: o.keyFile === undefined ? undefined : readFileSync(o.keyFile),
        ALPNProtocols: ['h2'],
      },
      () => {
        const serial = socket.getPeerCertificate().serialNumber;
        socket.destroy();
        resolve(serial.toUpperCase());
      },
    );
    socket.once('error', reject);
  });
}

export async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}
