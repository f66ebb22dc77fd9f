import { readFileSync } from 'node:fs';
import { type Server, createServer } from 'nice-grpc';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';
import { ServerReflection, ServerReflectionService } from 'nice-grpc-server-reflection';
import type { Logger } from 'pino';
import type { Verifier } from '../auth/verifier.js';
import { PrivacyServiceDefinition } from '../gen/lethe/privacy/v1/privacy.js';
import type { PrivacyEngine } from '../privacy/engine.js';
import type { ServerMetrics } from '../metrics/server-metrics.js';
import { authentication, errorsAndLogging, exportRecordCounting } from './middleware.js';
import { privacyService } from './privacy-service.js';

const DESCRIPTOR_SET = new URL('../gen/descriptor-set.binpb', import.meta.url);
const HEALTH_SERVICE = 'grpc.health.v1.Health';

export interface GrpcServer {
  readonly port: number;
  readonly health: HealthState;
  /** Health NOT_SERVING, stop accepting calls, let running calls finish for up to `graceMs`, then cancel the rest. */
  shutdown(graceMs: number): Promise<void>;
}

/**
 * PrivacyService (authenticated), the standard health service and server reflection, which
 * need no token so that probes and grpcurl work.
 */
export async function startGrpcServer(opts: { engine: PrivacyEngine; verify: Verifier; logger: Logger; host: string; port: number; metrics?: ServerMetrics }): Promise<GrpcServer> {
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
  const host = opts.host.includes(':') && !opts.host.startsWith('[') ? `[${opts.host}]` : opts.host;
  const port = await server.listen(`${host}:${opts.port}`);
  health.setStatus('healthy');
  health.setStatus('healthy', PrivacyServiceDefinition.fullName);

  return {
    port,
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
    },
  };
}
