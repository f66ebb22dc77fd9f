import { readFileSync } from 'node:fs';
import type { ServerCredentials } from '@grpc/grpc-js';
import { type Server, createServer } from 'nice-grpc';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';
import { ServerReflection, ServerReflectionService } from 'nice-grpc-server-reflection';
import type { Logger } from 'pino';
import type { Verifier } from '../auth/verifier.js';
import { ConfigError } from '../errors.js';
import { PrivacyServiceDefinition } from '../gen/lethe/privacy/v1/privacy.js';
import type { PrivacyEngine } from '../privacy/engine.js';
import type { ServerMetrics } from '../metrics/server-metrics.js';
import { authentication, errorsAndLogging, exportRecordCounting } from './middleware.js';
import { privacyService } from './privacy-service.js';

const DESCRIPTOR_SET = new URL('../gen/descriptor-set.binpb', import.meta.url);
const HEALTH_SERVICE = 'grpc.health.v1.Health';

export interface GrpcServer {
  readonly port: number;
  /** The plaintext health-only listener's port, when one was asked for. */
  readonly healthPort: number | undefined;
  readonly health: HealthState;
  /** Health NOT_SERVING, stop accepting calls, let running calls finish for up to `graceMs`, then cancel the rest. */
  shutdown(graceMs: number): Promise<void>;
}

export interface GrpcServerOptions {
  engine: PrivacyEngine;
  verify: Verifier;
  logger: Logger;
  host: string;
  port: number;
  metrics?: ServerMetrics | undefined;
  /** TLS (or mTLS) credentials; unset: plaintext. */
  credentials?: ServerCredentials | undefined;
  /** A plaintext listener with only the health service, for probes that cannot speak TLS. */
  health?: { host: string; port: number } | undefined;
}

const bracketed = (host: string) => (host.includes(':') && !host.startsWith('[') ? `[${host}]` : host);

/**
 * PrivacyService (authenticated), the standard health service and server reflection, which
 * need no token so that probes and grpcurl work.
 */
export async function startGrpcServer(opts: GrpcServerOptions): Promise<GrpcServer> {
  const health = HealthState();
  const server: Server = createServer({
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_receive_message_length': 1024 * 1024,
  }).use(errorsAndLogging(opts.logger, opts.metrics));
  const authenticated = server.with(authentication(opts.verify));
  (opts.metrics === undefined ? authenticated : authenticated.with(exportRecordCounting(opts.metrics))).add(PrivacyServiceDefinition, privacyService(opts.engine));
  server.add(HealthDefinition, HealthServiceImpl(health));
  server.add(
    ServerReflectionService,
    ServerReflection(readFileSync(DESCRIPTOR_SET), [PrivacyServiceDefinition.fullName, HEALTH_SERVICE]),
  );
  const port = await server.listen(`${bracketed(opts.host)}:${opts.port}`, opts.credentials);
  // Kubernetes' gRPC probes cannot speak TLS: they get a listener of their own that answers
  // grpc.health.v1 only (the same states), so nothing else is ever served without TLS.
  let probes: Server | undefined;
  let healthPort: number | undefined;
  if (opts.health !== undefined) {
    probes = createServer();
    probes.add(HealthDefinition, HealthServiceImpl(health));
    try {
      healthPort = await probes.listen(`${bracketed(opts.health.host)}:${opts.health.port}`);
    } catch (err) {
      server.forceShutdown();
      throw new ConfigError(`cannot listen on ${opts.health.host}:${opts.health.port} (in use, or not an address of this machine)`, 'LETHE_GRPC_HEALTH_LISTEN', { cause: err });
    }
  }
  health.setStatus('healthy');
  health.setStatus('healthy', PrivacyServiceDefinition.fullName);

  return {
    port,
    healthPort,
    health,
    async shutdown(graceMs) {
      health.setStatus('unhealthy');
      health.setStatus('unhealthy', PrivacyServiceDefinition.fullName);
      let timer: NodeJS.Timeout | undefined;
      const forced = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
      });
      await Promise.race([server.shutdown(), forced]);
      clearTimeout(timer);
      probes?.forceShutdown();
    },
  };
}
