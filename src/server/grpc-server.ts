import { readFileSync } from 'node:fs';
import type { ServerCredentials } from '@grpc/grpc-js';
import { type Server, createServer } from 'nice-grpc';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';
import { ServerReflection, ServerReflectionService } from 'nice-grpc-server-reflection';
import type { Logger } from 'pino';
import type { Verifier } from '../auth/verifier.js';
import type { GrpcLimits } from '../config/limits.js';
import { ConfigError } from '../errors.js';
import { PrivacyServiceDefinition } from '../gen/lethe/privacy/v1/privacy.js';
import type { PrivacyEngine } from '../privacy/engine.js';
import type { ServerMetrics } from '../metrics/server-metrics.js';
import { authentication, errorsAndLogging, exportRecordCounting } from './middleware.js';
import { acceptPreEncoded } from './pre-encoded.js';
import type { PageTokens } from '../api/page-token.js';
import { privacyService } from './privacy-service.js';
import { RequestSchemas, guardGrpcJsService, guardTsProtoService, refuseUndecodable } from './request-guard.js';
import { useInvalidArgumentForBadInput } from './grpc-js-input-errors.js';

const DESCRIPTOR_SET = new URL('../gen/descriptor-set.binpb', import.meta.url);
const HEALTH_SERVICE = 'grpc.health.v1.Health';
/** The health service name that answers SERVING while the process runs, whatever the database does: for liveness probes. */
export const LIVENESS_SERVICE = 'liveness';
/** Health and reflection requests are a few dozen bytes; nothing bigger is read. */
const SMALL_REQUEST_BYTES = 4 * 1024;
const REFLECTION_V1 = '/grpc.reflection.v1.ServerReflection/';
const REFLECTION_V1ALPHA = '/grpc.reflection.v1alpha.ServerReflection/';

export interface GrpcServer {
  readonly port: number;
  /** The plaintext health-only listener's port, when one was asked for. */
  readonly healthPort: number | undefined;
  /** The overall status and PrivacyService's (what readiness probes ask); ignored once shutdown began. */
  setServing(serving: boolean): void;
  /** Health NOT_SERVING, stop accepting calls, let running calls finish for up to `graceMs`, then cancel the rest. */
  shutdown(graceMs: number): Promise<void>;
}

export interface GrpcServerOptions {
  readonly engine: PrivacyEngine;
  readonly verify: Verifier;
  readonly logger: Logger;
  readonly host: string;
  readonly port: number;
  readonly limits: GrpcLimits;
  readonly pageTokens: PageTokens;
  readonly metrics?: ServerMetrics | undefined;
  /** TLS (or mTLS) credentials; unset: plaintext. */
  readonly credentials?: ServerCredentials | undefined;
  /** A plaintext listener with only the health service, for probes that cannot speak TLS. */
  readonly health?: { host: string; port: number } | undefined;
}

const bracketed = (host: string) => (host.includes(':') && !host.startsWith('[') ? `[${host}]` : host);

/** grpc-js options from the configured limits. */
function channelOptions(l: GrpcLimits) {
  return {
    'grpc.max_receive_message_length': l.maxReceiveMessageBytes,
    'grpc.max_send_message_length': l.maxSendMessageBytes,
    'grpc.max_concurrent_streams': l.maxConcurrentStreams,
    'grpc.keepalive_time_ms': l.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': l.keepaliveTimeoutMs,
    'grpc.max_connection_idle_ms': l.maxConnectionIdleMs,
    'grpc.max_connection_age_ms': l.maxConnectionAgeMs,
    'grpc.max_connection_age_grace_ms': l.maxConnectionAgeGraceMs,
    // Clients may keep idle connections alive with pings (grpc-js 1.14 does not police their
    // rate on the server; Node's HTTP/2 layer ends sessions that flood it with pings or settings).
    'grpc.keepalive_permit_without_calls': 1,
  };
}

/**
 * PrivacyService (authenticated), the standard health service and server reflection (v1, and
 * v1alpha for older clients), which need no token so that probes and grpcurl work. Every
 * request of every service passes the request guard first.
 */
export async function startGrpcServer(opts: GrpcServerOptions): Promise<GrpcServer> {
  useInvalidArgumentForBadInput();
  const health = HealthState();
  const descriptorSet = readFileSync(DESCRIPTOR_SET);
  const schemas = new RequestSchemas(descriptorSet);
  const small = { schemas, maxRequestBytes: Math.min(SMALL_REQUEST_BYTES, opts.limits.maxReceiveMessageBytes) };
  const server: Server = createServer(channelOptions(opts.limits)).use(errorsAndLogging(opts.logger, opts.metrics)).use(refuseUndecodable(opts.logger));
  const authenticated = server.with(authentication(opts.verify));
  (opts.metrics === undefined ? authenticated : authenticated.with(exportRecordCounting(opts.metrics))).add(
    acceptPreEncoded(guardTsProtoService(PrivacyServiceDefinition, { schemas, maxRequestBytes: opts.limits.maxReceiveMessageBytes })),
    privacyService(opts.engine, opts.pageTokens),
  );
  server.add(guardTsProtoService(HealthDefinition, small), HealthServiceImpl(health));
  const reflection = ServerReflection(descriptorSet, [PrivacyServiceDefinition.fullName, HEALTH_SERVICE]);
  server.add(guardGrpcJsService(ServerReflectionService, small), reflection);
  // v1alpha has the same messages under another package name.
  const toAlpha = (path: string) => path.replace(REFLECTION_V1, REFLECTION_V1ALPHA);
  server.add(guardGrpcJsService(ServerReflectionService, { ...small, rename: toAlpha }), reflection);

  const port = await server.listen(`${bracketed(opts.host)}:${opts.port}`, opts.credentials);
  // Kubernetes' gRPC probes cannot speak TLS: they get a listener of their own that answers
  // grpc.health.v1 only (the same states, liveness included), so nothing else is ever served
  // without TLS.
  let probes: Server | undefined;
  let healthPort: number | undefined;
  if (opts.health !== undefined) {
    probes = createServer(channelOptions(opts.limits)).use(refuseUndecodable(opts.logger));
    probes.add(guardTsProtoService(HealthDefinition, small), HealthServiceImpl(health));
    try {
      healthPort = await probes.listen(`${bracketed(opts.health.host)}:${opts.health.port}`);
    } catch (err) {
      server.forceShutdown();
      throw new ConfigError(
        `cannot listen on ${opts.health.host}:${opts.health.port} (in use, or not an address of this machine)`,
        'LETHE_GRPC_HEALTH_LISTEN',
        { cause: err },
      );
    }
  }
  let stopping = false;
  const setServing = (serving: boolean) => {
    if (stopping) return;
    const status = serving ? 'healthy' : 'unhealthy';
    health.setStatus(status);
    health.setStatus(status, PrivacyServiceDefinition.fullName);
  };
  setServing(true);
  health.setStatus('healthy', LIVENESS_SERVICE);

  return {
    port,
    healthPort,
    setServing,
    async shutdown(graceMs) {
      setServing(false);
      stopping = true;
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
