import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { DEFAULT_DATABASE_TIMEOUTS, type DatabaseTimeouts } from '../store/database.js';
import { boundedDuration, parseSize, wholeNumber } from './common.js';

/**
 * Bounds on what one client or one sick dependency can cost the server: gRPC transport limits
 * and database timeouts (whose defaults the database layer owns, in DEFAULT_DATABASE_TIMEOUTS).
 */

export interface GrpcLimits {
  /** Largest request message accepted (grpc-js answers RESOURCE_EXHAUSTED above it). */
  readonly maxReceiveMessageBytes: number;
  /** Largest response message sent. */
  readonly maxSendMessageBytes: number;
  /** Concurrent calls (HTTP/2 streams) per connection. */
  readonly maxConcurrentStreams: number;
  /** The server pings a connection idle for this long, and drops it when no answer comes within the timeout. */
  readonly keepaliveTimeMs: number;
  readonly keepaliveTimeoutMs: number;
  /** A connection without calls for this long is closed (GOAWAY). */
  readonly maxConnectionIdleMs: number;
  /** Connections are closed after this age (so clients rebalance across replicas), with this grace for running calls. */
  readonly maxConnectionAgeMs: number;
  readonly maxConnectionAgeGraceMs: number;
}

export const grpcLimitsEnv = {
  // PrivacyService requests hold a few fields of at most 256 bytes; decoding cost grows with size.
  LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE: z.string().default('16KiB'),
  LETHE_GRPC_MAX_SEND_MESSAGE_SIZE: z.string().default('16MiB'),
  LETHE_GRPC_MAX_CONCURRENT_STREAMS: wholeNumber(1, 10_000, 100),
  LETHE_GRPC_KEEPALIVE_TIME: z.string().default('2m'),
  LETHE_GRPC_KEEPALIVE_TIMEOUT: z.string().default('20s'),
  LETHE_GRPC_MAX_CONNECTION_IDLE: z.string().default('15m'),
  LETHE_GRPC_MAX_CONNECTION_AGE: z.string().default('30m'),
  LETHE_GRPC_MAX_CONNECTION_AGE_GRACE: z.string().default('5m'),
};

type GrpcLimitsEnv = { [K in keyof typeof grpcLimitsEnv]: z.output<(typeof grpcLimitsEnv)[K]> };

export function grpcLimits(e: GrpcLimitsEnv): GrpcLimits {
  return {
    maxReceiveMessageBytes: parseSize(e.LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE, 'LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE', '4KiB', '64MiB'),
    maxSendMessageBytes: parseSize(e.LETHE_GRPC_MAX_SEND_MESSAGE_SIZE, 'LETHE_GRPC_MAX_SEND_MESSAGE_SIZE', '1MiB', '256MiB'),
    maxConcurrentStreams: e.LETHE_GRPC_MAX_CONCURRENT_STREAMS,
    keepaliveTimeMs: boundedDuration(e.LETHE_GRPC_KEEPALIVE_TIME, 'LETHE_GRPC_KEEPALIVE_TIME', '10s', '24h'),
    keepaliveTimeoutMs: boundedDuration(e.LETHE_GRPC_KEEPALIVE_TIMEOUT, 'LETHE_GRPC_KEEPALIVE_TIMEOUT', '1s', '10m'),
    maxConnectionIdleMs: boundedDuration(e.LETHE_GRPC_MAX_CONNECTION_IDLE, 'LETHE_GRPC_MAX_CONNECTION_IDLE', '1s', '30d'),
    maxConnectionAgeMs: boundedDuration(e.LETHE_GRPC_MAX_CONNECTION_AGE, 'LETHE_GRPC_MAX_CONNECTION_AGE', '1s', '30d'),
    maxConnectionAgeGraceMs: boundedDuration(e.LETHE_GRPC_MAX_CONNECTION_AGE_GRACE, 'LETHE_GRPC_MAX_CONNECTION_AGE_GRACE', '0ms', '1d'),
  };
}

/** Unset: the database layer's defaults (DEFAULT_DATABASE_TIMEOUTS, where they are written once). */
export const databaseTimeoutsEnv = {
  LETHE_DB_STATEMENT_TIMEOUT: z.string().optional(),
  LETHE_DB_LOCK_TIMEOUT: z.string().optional(),
  LETHE_DB_IDLE_IN_TRANSACTION_TIMEOUT: z.string().optional(),
  LETHE_DB_QUERY_TIMEOUT: z.string().optional(),
  LETHE_DB_CONNECT_TIMEOUT: z.string().optional(),
  LETHE_DB_ACQUIRE_TIMEOUT: z.string().optional(),
  LETHE_DB_HEALTH_INTERVAL: z.string().optional(),
  LETHE_DB_HEALTH_TIMEOUT: z.string().optional(),
};

type DatabaseTimeoutsEnv = { readonly [K in keyof typeof databaseTimeoutsEnv]?: string | undefined };

export function databaseTimeouts(e: DatabaseTimeoutsEnv): DatabaseTimeouts {
  const d = DEFAULT_DATABASE_TIMEOUTS;
  const duration = (name: keyof DatabaseTimeoutsEnv, min: string, max: string, fallback: number) => {
    const value = e[name];
    return value === undefined ? fallback : boundedDuration(value, name, min, max);
  };
  const t: DatabaseTimeouts = {
    statementTimeoutMs: duration('LETHE_DB_STATEMENT_TIMEOUT', '100ms', '1h', d.statementTimeoutMs),
    lockTimeoutMs: duration('LETHE_DB_LOCK_TIMEOUT', '100ms', '1h', d.lockTimeoutMs),
    idleInTransactionTimeoutMs: duration('LETHE_DB_IDLE_IN_TRANSACTION_TIMEOUT', '1s', '1d', d.idleInTransactionTimeoutMs),
    queryTimeoutMs: duration('LETHE_DB_QUERY_TIMEOUT', '100ms', '1h', d.queryTimeoutMs),
    connectTimeoutMs: duration('LETHE_DB_CONNECT_TIMEOUT', '100ms', '5m', d.connectTimeoutMs),
    acquireTimeoutMs: duration('LETHE_DB_ACQUIRE_TIMEOUT', '100ms', '5m', d.acquireTimeoutMs),
    healthIntervalMs: duration('LETHE_DB_HEALTH_INTERVAL', '100ms', '5m', d.healthIntervalMs),
    healthTimeoutMs: duration('LETHE_DB_HEALTH_TIMEOUT', '100ms', '5m', d.healthTimeoutMs),
  };
  // The server's own timeout should end a slow statement cleanly (the connection stays usable);
  // the client's is the backstop for a server that does not answer at all.
  if (t.queryTimeoutMs <= t.statementTimeoutMs) {
    throw new ConfigError(
      'must be longer than LETHE_DB_STATEMENT_TIMEOUT (the server ends slow statements; this catches a server that does not answer)',
      'LETHE_DB_QUERY_TIMEOUT',
    );
  }
  if (t.connectTimeoutMs > t.acquireTimeoutMs) {
    throw new ConfigError('must be at least LETHE_DB_CONNECT_TIMEOUT (acquiring may have to open a connection)', 'LETHE_DB_ACQUIRE_TIMEOUT');
  }
  return t;
}
