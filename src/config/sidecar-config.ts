import { resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import type { StreamSettings } from '../events/nats.js';
import { SERVICE_NAME, SERVICE_NAME_RULE } from '../events/subjects.js';
import type { DataMap } from '../privacy/data-map.js';
import { usesHash } from '../privacy/forget.js';
import { type Failpoint, parseFailpoints } from '../runtime/failpoints.js';
import {
  type Env,
  type ListenAddress,
  type LogLevel,
  NATS_URL_RULE,
  STREAM_DUPLICATE_WINDOW_DEFAULT,
  STREAM_MAX_AGE_DEFAULT,
  boundedDuration,
  hashKey,
  isNatsUrl,
  logLevel,
  parseDuration,
  parseEnv,
  parseListen,
  streamMaxAge,
  streamName,
  wholeNumber,
} from './common.js';
import type { DatabaseTimeouts } from '../store/database.js';
import { databaseTimeouts, databaseTimeoutsEnv } from './limits.js';
import { type NatsTlsConfig, checkPostgresTls, natsTls } from './tls-config.js';

/**
 * The configuration of `lethe sidecar`, the purge agent a downstream service runs beside
 * itself: read once from the environment and the flags, checked before anything starts.
 */

export interface SidecarConfig {
  /** The downstream service: the durable consumer's name and the receipt subject's last token. */
  readonly service: string;
  readonly dataMapPath: string;
  /** The service's own database (a secret: log `describePostgresUrl(databaseUrl)` only). */
  readonly databaseUrl: string;
  readonly natsUrl: string;
  /** NATS over TLS (a tls:// URL or LETHE_NATS_TLS_CA); the receipts go this way too. */
  readonly natsTls: NatsTlsConfig | undefined;
  /** The privacy stream; created with these settings only when it does not exist yet. */
  readonly stream: StreamSettings;
  /** Events purged at the same time, at most. */
  readonly concurrency: number;
  /** Deliveries of one event before it is terminated with a failure receipt. */
  readonly maxDeliveries: number;
  /** How long an event may stay unacknowledged before JetStream delivers it again. */
  readonly ackWaitMs: number;
  /** The first retry's delay; each further delivery doubles it, up to a minute. */
  readonly retryBaseMs: number;
  /** Downstream exports: answered only with the server's export key (public) to check requests. */
  readonly exports: {
    /** SPKI PEM of the server's export key; unset: export requests are not answered. */
    readonly verifyKeyFile: string | undefined;
    /** Exports answered at once. */
    readonly concurrency: number;
    /** How long to wait for the server's go-ahead after a chunk before giving the export up. */
    readonly ackTimeoutMs: number;
  };
  /** Settings read in an old form, each with what to write instead (logged at start-up). */
  readonly deprecations: readonly string[];
  readonly healthListen: ListenAddress;
  /** Key for the data map's `hash` action (required only when the map uses it). */
  readonly hashKey: Buffer | undefined;
  readonly logLevel: LogLevel;
  /** Test only: where to crash on purpose (see src/failpoints.ts). */
  readonly failpoints: ReadonlySet<Failpoint>;
  /** Statement, lock, query, connect and pool timeouts of the service's database (the same settings as the server's). */
  readonly databaseTimeouts: DatabaseTimeouts;
}

export interface SidecarFlags {
  readonly service?: string | undefined;
  readonly dataMap?: string | undefined;
  readonly healthListen?: string | undefined;
}

export const DEFAULT_HEALTH_LISTEN = '127.0.0.1:8081';
export { DEFAULT_STREAM } from './common.js';

const envSchema = z.object({
  DATABASE_URL: z
    .string({ message: "required: the downstream service's own PostgreSQL database (postgres://…)" })
    .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL'),
  LETHE_NATS_URL: z.string({ message: 'required: the NATS server carrying the privacy events (nats://host:4222)' }).refine(isNatsUrl, NATS_URL_RULE),
  LETHE_NATS_STREAM: streamName,
  LETHE_SIDECAR_CONCURRENCY: wholeNumber(1, 64, 8),
  LETHE_SIDECAR_MAX_DELIVERIES: wholeNumber(1, 1000, 5),
  LETHE_SIDECAR_ACK_WAIT: z.string().default('30s'),
  LETHE_EXPORT_VERIFY_KEY_FILE: z.string().min(1).optional(),
  LETHE_SIDECAR_EXPORT_CONCURRENCY: wholeNumber(1, 64, 2),
  LETHE_SIDECAR_EXPORT_ACK_TIMEOUT: z.string().default('2m'),
  LETHE_SIDECAR_RETRY_BASE: z.string().optional(),
  LETHE_SIDECAR_RETRY_BASE_MS: z.string().optional(),
  LETHE_HASH_KEY: hashKey,
  LETHE_LOG_LEVEL: logLevel,
  LETHE_FAILPOINTS: z.string().optional(),
  LETHE_NATS_MAX_AGE: z.string().default(STREAM_MAX_AGE_DEFAULT),
  ...databaseTimeoutsEnv,
});

/**
 * Durations carry their unit (`30s`); a bare number in the old unit is still read, with a
 * deprecation the sidecar logs at start-up.
 */
function durationOrLegacyNumber(value: string, name: string, oldUnit: 's' | 'ms', bounds: [string, string], deprecations: string[]): number {
  return /^\d+$/.test(value.trim()) ? legacyNumber(value, name, oldUnit, bounds, deprecations, name) : boundedDuration(value, name, ...bounds);
}

function legacyNumber(value: string, name: string, oldUnit: 's' | 'ms', bounds: [string, string], deprecations: string[], newName: string): number {
  if (!/^\d+$/.test(value.trim()))
    throw new ConfigError(`must be a whole number of ${oldUnit === 's' ? 'seconds' : 'milliseconds'}; better, set ${newName} to a duration such as 30s`, name);
  const written = `${value.trim()}${oldUnit}`;
  deprecations.push(`${name}=${value.trim()} is deprecated: set ${newName}=${written}`);
  return boundedDuration(written, name, ...bounds);
}

export function loadSidecarConfig(env: Env, flags: SidecarFlags): Readonly<SidecarConfig> {
  // Flags first: they are what the operator typed on the command line.
  if (flags.service === undefined || flags.service === '') {
    throw new ConfigError('required: the name of this downstream service (e.g. --service orders)', '--service');
  }
  if (!SERVICE_NAME.test(flags.service)) {
    throw new ConfigError(`'${flags.service}' is not a service name: ${SERVICE_NAME_RULE}`, '--service');
  }
  if (flags.dataMap === undefined || flags.dataMap === '') {
    throw new ConfigError("required: the service's data map (a YAML file)", '--data-map');
  }
  const healthListen = parseListen(flags.healthListen ?? DEFAULT_HEALTH_LISTEN, '--health-listen');

  const e = parseEnv(envSchema, env);
  checkPostgresTls(e.DATABASE_URL, 'DATABASE_URL');
  const deprecations: string[] = [];
  // The duplicate window of a stream the sidecar has to create: the server's default.
  const duplicateWindowMs = parseDuration(STREAM_DUPLICATE_WINDOW_DEFAULT, 'LETHE_NATS_DUPLICATE_WINDOW');
  const ackWaitMs = durationOrLegacyNumber(e.LETHE_SIDECAR_ACK_WAIT, 'LETHE_SIDECAR_ACK_WAIT', 's', ['1s', '1h'], deprecations);
  const retryBaseMs =
    e.LETHE_SIDECAR_RETRY_BASE !== undefined || e.LETHE_SIDECAR_RETRY_BASE_MS === undefined
      ? boundedDuration(e.LETHE_SIDECAR_RETRY_BASE ?? '1s', 'LETHE_SIDECAR_RETRY_BASE', '1ms', '60s')
      : legacyNumber(e.LETHE_SIDECAR_RETRY_BASE_MS, 'LETHE_SIDECAR_RETRY_BASE_MS', 'ms', ['1ms', '60s'], deprecations, 'LETHE_SIDECAR_RETRY_BASE');

  return Object.freeze({
    service: flags.service,
    dataMapPath: resolve(flags.dataMap),
    databaseUrl: e.DATABASE_URL,
    natsUrl: e.LETHE_NATS_URL,
    natsTls: natsTls(env, e.LETHE_NATS_URL),
    stream: Object.freeze({
      name: e.LETHE_NATS_STREAM,
      replicas: 1,
      duplicateWindowMs,
      maxAgeMs: streamMaxAge(e.LETHE_NATS_MAX_AGE, duplicateWindowMs),
    }),
    concurrency: e.LETHE_SIDECAR_CONCURRENCY,
    maxDeliveries: e.LETHE_SIDECAR_MAX_DELIVERIES,
    ackWaitMs,
    retryBaseMs,
    exports: Object.freeze({
      verifyKeyFile: e.LETHE_EXPORT_VERIFY_KEY_FILE === undefined ? undefined : resolve(e.LETHE_EXPORT_VERIFY_KEY_FILE),
      concurrency: e.LETHE_SIDECAR_EXPORT_CONCURRENCY,
      ackTimeoutMs: boundedDuration(e.LETHE_SIDECAR_EXPORT_ACK_TIMEOUT, 'LETHE_SIDECAR_EXPORT_ACK_TIMEOUT', '1s', '1h'),
    }),
    deprecations,
    healthListen,
    hashKey: e.LETHE_HASH_KEY === undefined ? undefined : Buffer.from(e.LETHE_HASH_KEY, 'hex'),
    logLevel: e.LETHE_LOG_LEVEL,
    failpoints: parseFailpoints(e.LETHE_FAILPOINTS),
    databaseTimeouts: databaseTimeouts(e),
  });
}

/**
 * The hash key for this data map: a map that hashes a column cannot run without one (a
 * sidecar has no data directory to keep a generated key in, and every replica must agree).
 */
export function hashKeyFor(config: Pick<SidecarConfig, 'hashKey' | 'dataMapPath'>, map: DataMap): Buffer | undefined {
  if (usesHash(map) && config.hashKey === undefined) {
    throw new ConfigError(`required: the data map ${config.dataMapPath} uses the hash action (openssl rand -hex 32)`, 'LETHE_HASH_KEY');
  }
  return config.hashKey;
}
