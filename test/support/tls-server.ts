import { readFileSync } from 'node:fs';
import { connect } from 'node:tls';

/** What the TLS tests need around a running server: a logger they can read, and the certificate a new connection sees. */

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
