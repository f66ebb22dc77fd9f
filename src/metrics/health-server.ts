import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ListenAddress } from '../config/config.js';
import type { Registry } from './registry.js';

/**
 * Kubernetes probes over plain HTTP: `GET /healthz` answers 200 while the process runs
 * (liveness); `GET /readyz` answers 200 only while `isReady()` holds (readiness). The bodies
 * are one word: nothing about events, users or configuration. Given a registry, `GET /metrics`
 * answers its metrics in Prometheus' text format (labels are bounded enums, never personal data).
 */
export interface HealthServer {
  /** The bound address (the real port when asked for port 0). */
  readonly address: ListenAddress;
  close(): Promise<void>;
}

export interface HealthServerOptions {
  /** Serve `GET /metrics` from this registry. */
  readonly metrics?: Registry;
}

export async function startHealthServer(listen: ListenAddress, isReady: () => boolean, options: HealthServerOptions = {}): Promise<HealthServer> {
  const { metrics } = options;
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const answer = (status: number, body: string) => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : `${body}\n`);
    };
    if (path !== '/healthz' && path !== '/readyz' && (path !== '/metrics' || metrics === undefined)) return answer(404, 'not found');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return answer(405, 'method not allowed');
    }
    if (path === '/healthz') return answer(200, 'ok');
    if (path === '/metrics' && metrics !== undefined) {
      metrics.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': metrics.contentType, 'cache-control': 'no-store' });
          res.end(req.method === 'HEAD' ? undefined : text);
        },
        // A collector failed: say so without its message (it could quote data).
        () => answer(500, 'metrics collection failed'),
      );
      return;
    }
    return isReady() ? answer(200, 'ready') : answer(503, 'not ready');
  });
  // Probes are short: do not let an idle keep-alive connection hold up close().
  server.keepAliveTimeout = 1_000;
  const host = listen.host.replace(/^\[(.*)\]$/, '$1');
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  return {
    address: { host: listen.host, port: bound.port },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
