import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import type { StreamSettings } from '../events/nats.js';
import { ConfigError } from '../errors.js';
import {
  type LogLevel,
  flag,
  hashKey,
  logLevel,
  parseDuration,
  parseEnv,
  commaList,
  wholeNumber,
  type Env,
  type ListenAddress,
  parseListen,
  boundedDuration,
  NATS_URL_RULE,
  STREAM_DUPLICATE_WINDOW_DEFAULT,
  STREAM_MAX_AGE_DEFAULT,
  isNatsUrl,
  streamMaxAge,
  streamName,
} from './common.js';
import { type GrpcLimits, databaseTimeouts, databaseTimeoutsEnv, grpcLimits, grpcLimitsEnv } from './limits.js';
import { type KubernetesAccess, kubernetesAccess } from './kubernetes-access.js';
import { type NatsTlsConfig, type ServerTlsConfig, type ServerTlsFlags, checkPostgresTls, natsTls, serverTls } from './tls-config.js';
import { SERVICE_NAME, SERVICE_NAME_RULE } from '../events/subjects.js';
import { DEFAULT_DATA_MAP_PATH } from '../privacy/data-map.js';
import type { DatabaseTarget } from '../store/database.js';

/**
 * Configuration is read here, once, from the environment and command-line flags, and checked
 * before anything starts. Nothing else in Lethe reads process.env.
 */

export { type Env, type ListenAddress, parseDuration, parseListen } from './common.js';

export type AuthConfig =
  /** `lethe serve` keeps a signing key in its data directory; `lethe token` mints with it. */
  | { readonly mode: 'local'; readonly issuer: string; readonly audience: string }
  | { readonly mode: 'jwks'; readonly jwksUrl: URL; readonly issuer: string; readonly audience: string }
  | { readonly mode: 'public-key'; readonly publicKeyFile: string; readonly issuer: string; readonly audience: string };

/** Kubernetes service-account tokens as a second trust source, for service principals. */
export interface ServiceAccountAuthConfig {
  /** The cluster's --service-account-issuer; tokens whose `iss` is this go to this check. */
  readonly issuer: string;
  readonly audience: string;
  readonly apiServer: KubernetesAccess;
}

export interface ServerConfig {
  readonly listen: ListenAddress;
  readonly dataDir: string;
  readonly database: DatabaseTarget;
  readonly dataMapPath: string;
  readonly auth: AuthConfig;
  /** Unset: service-account tokens are not accepted. */
  readonly serviceAccounts: ServiceAccountAuthConfig | undefined;
  /** Token subjects trusted with platform-owner rights, e.g. the operator's service account. */
  readonly platformPrincipals: ReadonlySet<string>;
  /** Key for the data map's `hash` action. Generated in the data directory when unset. */
  readonly hashKey: Buffer | undefined;
  readonly logLevel: LogLevel;
  readonly demo: boolean;
  /** Create the sample identity schema (embedded database, --demo, or asked for). */
  readonly migrateIdentitySchema: boolean;
  readonly events: EventsConfig;
  readonly artifacts: ArtifactsConfig;
  /** Where `GET /metrics` (Prometheus) is served; unset: no HTTP listener at all. */
  readonly metricsListen: ListenAddress | undefined;
  /** Exports running at once (LETHE_MAX_CONCURRENT_EXPORTS). */
  readonly maxConcurrentExports: number;
  /** An ExportUser caller reading nothing this long loses its export (LETHE_EXPORT_STALL_TIMEOUT). */
  readonly exportStallTimeoutMs: number;
  /** A person's own erasure runs this long after they asked; 0: at once (LETHE_SELF_ERASURE_GRACE). */
  readonly selfErasureGraceMs: number;
  /** The reference's HTTP API; undefined: not served. */
  readonly http: HttpConfig | undefined;
  /** gRPC transport limits (message sizes, streams, keepalive, connection age). */
  readonly grpc: GrpcLimits;
  /** Unset: plaintext gRPC (the local demo). */
  readonly tls: ServerTlsConfig | undefined;
  /**
   * A plaintext listener serving only grpc.health.v1.Health, for Kubernetes gRPC probes (which
   * cannot speak TLS). Unset: none.
   */
  readonly healthListen: ListenAddress | undefined;
}

/** Stored exports (StoreExport): their key, how long they are kept, how often expiry runs. */
interface ArtifactsConfig {
  /** AES-256 key. Unset: generated in the data directory (embedded database only). */
  readonly key: Buffer | undefined;
  readonly ttlMs: number;
  readonly sweepIntervalMs: number;
}

interface EventsConfig {
  /** Unset: anonymization events wait in the outbox. */
  readonly natsUrl: string | undefined;
  readonly natsTls: NatsTlsConfig | undefined;
  readonly stream: StreamSettings;
  /** Published outbox rows are deleted after this long. */
  readonly outboxRetentionMs: number;
  /** Downstream services that must confirm their purge before a forget is completed. */
  readonly expectedServices: readonly string[];
  readonly confirmationTimeoutMs: number;
  /** The CloudEvents `source` attribute. */
  readonly source: string;
  /** How long each downstream service has to answer an export, and to send each next chunk. */
  readonly downstreamExportTimeoutMs: number;
  /**
   * The Ed25519 key (PKCS#8 PEM) that signs export requests to the sidecars. Unset: with local
   * auth, a key in the data directory, made on first use; otherwise downstream services are not
   * asked, and every export says so (partial).
   */
  readonly exportSigningKeyFile: string | undefined;
}

interface HttpConfig {
  readonly listen: ListenAddress;
  /** CORS origins; empty: CORS off. */
  readonly corsOrigins: readonly string[];
  readonly rateLimitPerMinute: number;
}

export interface ServeFlags extends ServerTlsFlags {
  readonly listen?: string | undefined;
  /** The HTTP API's address; with --demo it defaults to DEMO_HTTP_LISTEN. */
  readonly httpListen?: string | undefined;
  readonly dataDir?: string | undefined;
  readonly demo?: boolean | undefined;
}

export const LOCAL_ISSUER = 'lethe-local';
export const LOCAL_AUDIENCE = 'lethe';
export const DEFAULT_LISTEN = '127.0.0.1:50051';
/** Where `lethe serve --demo` serves the HTTP API unless told otherwise. */
const DEMO_HTTP_LISTEN = '127.0.0.1:8080';

export function defaultDataDir(env: Env): string {
  return env.LETHE_DATA_DIR ?? join(env.HOME ?? homedir(), '.lethe');
}

const envSchema = z.object({
  DATABASE_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL')
    .optional(),
  LETHE_LISTEN: z.string().optional(),
  LETHE_DATA_MAP: z.string().min(1).optional(),
  LETHE_JWKS_URL: z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' }).optional(),
  LETHE_JWT_PUBLIC_KEY_FILE: z.string().min(1).optional(),
  LETHE_JWT_ISSUER: z.string().min(1).optional(),
  LETHE_JWT_AUDIENCE: z.string().min(1).optional(),
  LETHE_PLATFORM_PRINCIPALS: z.string().optional(),
  // Service principals: Kubernetes service-account tokens (see serviceAccountAuth below).
  LETHE_SERVICE_ACCOUNT_ISSUER: z
    .string()
    .regex(/^\S+$/, "must be the cluster's service-account issuer, e.g. https://kubernetes.default.svc.cluster.local")
    .optional(),
  LETHE_SERVICE_ACCOUNT_AUDIENCE: z.string().regex(/^\S+$/, 'must be one audience without spaces').default('lethe'),
  KUBECONFIG: z.string().optional(),
  KUBERNETES_SERVICE_HOST: z.string().optional(),
  KUBERNETES_SERVICE_PORT: z.string().optional(),
  LETHE_HASH_KEY: hashKey,
  LETHE_LOG_LEVEL: logLevel,
  LETHE_MIGRATE_IDENTITY_SCHEMA: flag,
  LETHE_NATS_URL: z.string().refine(isNatsUrl, NATS_URL_RULE).optional(),
  LETHE_NATS_STREAM: streamName,
  LETHE_NATS_STREAM_REPLICAS: z.enum(['1', '3', '5'], { message: 'must be 1, 3 or 5' }).default('1'),
  LETHE_NATS_DUPLICATE_WINDOW: z.string().default(STREAM_DUPLICATE_WINDOW_DEFAULT),
  LETHE_NATS_MAX_AGE: z.string().default(STREAM_MAX_AGE_DEFAULT),
  LETHE_OUTBOX_RETENTION: z.string().default('7d'),
  LETHE_DOWNSTREAM_SERVICES: z.string().default(''),
  LETHE_CONFIRMATION_TIMEOUT: z.string().default('24h'),
  LETHE_DOWNSTREAM_EXPORT_TIMEOUT: z.string().default('30s'),
  LETHE_EXPORT_SIGNING_KEY_FILE: z.string().min(1).optional(),
  LETHE_EVENT_SOURCE: z.string().min(1).max(256).default('lethe'),
  // Export artifacts
  LETHE_ARTIFACT_KEY: z
    .string()
    .regex(/^[0-9a-fA-F]{64}$/, 'must be exactly 32 bytes written as 64 hex digits (openssl rand -hex 32)')
    .optional(),
  LETHE_ARTIFACT_TTL: z.string().default('7d'),
  LETHE_ARTIFACT_SWEEP_INTERVAL: z.string().default('1m'),
  // Metrics: off unless asked for (the server listens on loopback only unless told otherwise).
  LETHE_METRICS_LISTEN: z.string().optional(),
  LETHE_EXPORT_STALL_TIMEOUT: z.string().default('30s'),
  LETHE_SELF_ERASURE_GRACE: z.string().default('7d'),
  LETHE_HTTP_LISTEN: z.string().optional(),
  LETHE_HTTP_CORS_ORIGINS: z.string().optional(),
  LETHE_HTTP_RATE_LIMIT: wholeNumber(1, 1_000_000, 600, ' (requests per minute per client)'),
  LETHE_MAX_CONCURRENT_EXPORTS: z
    .string()
    .regex(/^[1-9]\d{0,3}$/, 'must be a whole number from 1 to 9999')
    .transform(Number)
    .optional(),
  ...grpcLimitsEnv,
  ...databaseTimeoutsEnv,
  // TLS (see tls-config.ts): how often the certificate files are checked for a rotation.
  LETHE_TLS_RELOAD_INTERVAL: z.string().default('10s'),
  LETHE_GRPC_HEALTH_LISTEN: z.string().optional(),
});

/** At most a minute: new connections must get a rotated certificate within one. */
export function tlsReloadInterval(value: string): number {
  const ms = parseDuration(value, 'LETHE_TLS_RELOAD_INTERVAL');
  if (ms < 100 || ms > 60_000)
    throw new ConfigError('must be from 100ms to 1m (new connections get a rotated certificate within this)', 'LETHE_TLS_RELOAD_INTERVAL');
  return ms;
}

const optionalListen = (value: string | undefined, source: string): ListenAddress | undefined =>
  value === undefined || value.trim() === '' ? undefined : parseListen(value.trim(), source);

function artifactsConfig(e: z.infer<typeof envSchema>, database: DatabaseTarget): ArtifactsConfig {
  // Replicas sharing a database must share the key: none of them may make up its own.
  if (e.LETHE_ARTIFACT_KEY === undefined && database.kind === 'postgres') {
    throw new ConfigError(
      'required with DATABASE_URL: the key export artifacts are encrypted with, the same for every replica (openssl rand -hex 32)',
      'LETHE_ARTIFACT_KEY',
    );
  }
  const ttlMs = parseDuration(e.LETHE_ARTIFACT_TTL, 'LETHE_ARTIFACT_TTL');
  if (ttlMs < 10_000) throw new ConfigError('must be at least 10s', 'LETHE_ARTIFACT_TTL');
  const sweepIntervalMs = parseDuration(e.LETHE_ARTIFACT_SWEEP_INTERVAL, 'LETHE_ARTIFACT_SWEEP_INTERVAL');
  if (sweepIntervalMs < 1_000) throw new ConfigError('must be at least 1s', 'LETHE_ARTIFACT_SWEEP_INTERVAL');
  return { key: e.LETHE_ARTIFACT_KEY === undefined ? undefined : Buffer.from(e.LETHE_ARTIFACT_KEY, 'hex'), ttlMs, sweepIntervalMs };
}

function httpConfig(e: z.infer<typeof envSchema>, flags: ServeFlags): HttpConfig | undefined {
  const value = flags.httpListen ?? e.LETHE_HTTP_LISTEN ?? (flags.demo === true ? DEMO_HTTP_LISTEN : undefined);
  if (value === undefined || value.trim() === '') return undefined;
  const corsOrigins = commaList(e.LETHE_HTTP_CORS_ORIGINS);
  for (const origin of corsOrigins) {
    if (!/^https?:\/\/[^/\s]+$/.test(origin)) throw new ConfigError(`'${origin}' is not an origin such as https://app.example.com`, 'LETHE_HTTP_CORS_ORIGINS');
  }
  const source = flags.httpListen !== undefined ? '--http-listen' : 'LETHE_HTTP_LISTEN';
  return { listen: parseListen(value.trim(), source), corsOrigins, rateLimitPerMinute: e.LETHE_HTTP_RATE_LIMIT };
}

export function loadServerConfig(env: Env, flags: ServeFlags = {}): Readonly<ServerConfig> {
  const e = parseEnv(envSchema, env);
  const listen = flags.listen !== undefined ? parseListen(flags.listen, '--listen') : parseListen(e.LETHE_LISTEN ?? DEFAULT_LISTEN, 'LETHE_LISTEN');
  const dataDir = resolve(flags.dataDir ?? defaultDataDir(env));
  // Checked with PGlite too (a typo fails at once), used with PostgreSQL only: PGlite runs in
  // this process and cannot stall apart from it.
  const timeouts = databaseTimeouts(e);
  const database: DatabaseTarget =
    e.DATABASE_URL !== undefined ? { kind: 'postgres', url: e.DATABASE_URL, timeouts } : { kind: 'pglite', dataDir: join(dataDir, 'pgdata') };
  if (e.DATABASE_URL !== undefined) checkPostgresTls(e.DATABASE_URL, 'DATABASE_URL');

  let auth: AuthConfig;
  if (e.LETHE_JWKS_URL !== undefined || e.LETHE_JWT_PUBLIC_KEY_FILE !== undefined) {
    if (e.LETHE_JWKS_URL !== undefined && e.LETHE_JWT_PUBLIC_KEY_FILE !== undefined) {
      throw new ConfigError('set either LETHE_JWKS_URL or LETHE_JWT_PUBLIC_KEY_FILE, not both', 'LETHE_JWKS_URL');
    }
    if (e.LETHE_JWT_ISSUER === undefined)
      throw new ConfigError('required with a JWKS URL or public key: the issuer (iss) tokens must carry', 'LETHE_JWT_ISSUER');
    if (e.LETHE_JWT_AUDIENCE === undefined)
      throw new ConfigError('required with a JWKS URL or public key: the audience (aud) tokens must carry', 'LETHE_JWT_AUDIENCE');
    auth =
      e.LETHE_JWKS_URL !== undefined
        ? { mode: 'jwks', jwksUrl: new URL(e.LETHE_JWKS_URL), issuer: e.LETHE_JWT_ISSUER, audience: e.LETHE_JWT_AUDIENCE }
        : { mode: 'public-key', publicKeyFile: resolve(e.LETHE_JWT_PUBLIC_KEY_FILE ?? ''), issuer: e.LETHE_JWT_ISSUER, audience: e.LETHE_JWT_AUDIENCE };
  } else {
    auth = { mode: 'local', issuer: LOCAL_ISSUER, audience: LOCAL_AUDIENCE };
  }

  const serviceAccounts = serviceAccountAuth(e, auth);

  const principals = (e.LETHE_PLATFORM_PRINCIPALS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);

  const services = e.LETHE_DOWNSTREAM_SERVICES.split(',')
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
  for (const svc of services) {
    if (!SERVICE_NAME.test(svc)) throw new ConfigError(`'${svc}' is not a service name: ${SERVICE_NAME_RULE}`, 'LETHE_DOWNSTREAM_SERVICES');
  }
  const duplicateWindowMs = parseDuration(e.LETHE_NATS_DUPLICATE_WINDOW, 'LETHE_NATS_DUPLICATE_WINDOW');
  const events: EventsConfig = {
    natsUrl: e.LETHE_NATS_URL,
    natsTls: natsTls(env, e.LETHE_NATS_URL),
    stream: {
      name: e.LETHE_NATS_STREAM,
      replicas: Number(e.LETHE_NATS_STREAM_REPLICAS),
      duplicateWindowMs,
      maxAgeMs: streamMaxAge(e.LETHE_NATS_MAX_AGE, duplicateWindowMs),
    },
    outboxRetentionMs: parseDuration(e.LETHE_OUTBOX_RETENTION, 'LETHE_OUTBOX_RETENTION'),
    expectedServices: [...new Set(services)],
    confirmationTimeoutMs: parseDuration(e.LETHE_CONFIRMATION_TIMEOUT, 'LETHE_CONFIRMATION_TIMEOUT'),
    source: e.LETHE_EVENT_SOURCE,
    downstreamExportTimeoutMs: boundedDuration(e.LETHE_DOWNSTREAM_EXPORT_TIMEOUT, 'LETHE_DOWNSTREAM_EXPORT_TIMEOUT', '1s', '10m'),
    exportSigningKeyFile: e.LETHE_EXPORT_SIGNING_KEY_FILE === undefined ? undefined : resolve(e.LETHE_EXPORT_SIGNING_KEY_FILE),
  };

  const demo = flags.demo === true;
  return Object.freeze({
    listen,
    dataDir,
    database,
    dataMapPath: resolve(e.LETHE_DATA_MAP ?? DEFAULT_DATA_MAP_PATH),
    auth,
    serviceAccounts,
    platformPrincipals: new Set(principals),
    hashKey: e.LETHE_HASH_KEY === undefined ? undefined : Buffer.from(e.LETHE_HASH_KEY, 'hex'),
    logLevel: e.LETHE_LOG_LEVEL,
    demo,
    migrateIdentitySchema: database.kind === 'pglite' || demo || (e.LETHE_MIGRATE_IDENTITY_SCHEMA ?? false),
    events,
    artifacts: artifactsConfig(e, database),
    // A stored export holds two pooled connections (of 10); two stay free for every other call.
    http: httpConfig(e, flags),
    selfErasureGraceMs: e.LETHE_SELF_ERASURE_GRACE.trim() === '0' ? 0 : parseDuration(e.LETHE_SELF_ERASURE_GRACE, 'LETHE_SELF_ERASURE_GRACE'),
    exportStallTimeoutMs: parseDuration(e.LETHE_EXPORT_STALL_TIMEOUT, 'LETHE_EXPORT_STALL_TIMEOUT'),
    maxConcurrentExports: e.LETHE_MAX_CONCURRENT_EXPORTS ?? (database.kind === 'pglite' ? 1 : 4),
    grpc: grpcLimits(e),
    metricsListen: optionalListen(e.LETHE_METRICS_LISTEN, 'LETHE_METRICS_LISTEN'),
    tls: serverTls(env, flags, tlsReloadInterval(e.LETHE_TLS_RELOAD_INTERVAL)),
    healthListen: optionalListen(e.LETHE_GRPC_HEALTH_LISTEN, 'LETHE_GRPC_HEALTH_LISTEN'),
  });
}

// --- service principals (Kubernetes service-account tokens) ---

type ServiceAccountEnv = Pick<
  z.infer<typeof envSchema>,
  'LETHE_SERVICE_ACCOUNT_ISSUER' | 'LETHE_SERVICE_ACCOUNT_AUDIENCE' | 'KUBECONFIG' | 'KUBERNETES_SERVICE_HOST' | 'KUBERNETES_SERVICE_PORT'
>;

/**
 * LETHE_SERVICE_ACCOUNT_ISSUER turns service-account tokens on. The API server is reached, as
 * controller-runtime does it, through KUBECONFIG when set, else the pod's in-cluster service account.
 */
function serviceAccountAuth(e: ServiceAccountEnv, auth: AuthConfig): ServiceAccountAuthConfig | undefined {
  const issuer = e.LETHE_SERVICE_ACCOUNT_ISSUER;
  if (issuer === undefined) return undefined;
  if (issuer === auth.issuer) {
    // Tokens are routed by their issuer: one issuer cannot name two trust sources.
    throw new ConfigError(
      `'${issuer}' is also the issuer of user tokens (${auth.mode === 'local' ? 'the local signing key' : 'LETHE_JWT_ISSUER'}): the two trust sources need distinct issuers`,
      'LETHE_SERVICE_ACCOUNT_ISSUER',
    );
  }
  return {
    issuer,
    audience: e.LETHE_SERVICE_ACCOUNT_AUDIENCE,
    apiServer: kubernetesAccess(e, {
      setting: 'LETHE_SERVICE_ACCOUNT_ISSUER',
      why: 'is set, but verifying service-account tokens needs the Kubernetes API server',
    }),
  };
}
