import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { type Failpoint, parseFailpoints } from '../runtime/failpoints.js';
import { type Env, type ListenAddress, parseDuration, parseListen, tlsReloadInterval } from './config.js';
import { type LogLevel, commaList, flag, logLevel, parseEnv, wholeNumber } from './common.js';
import { type KubernetesAccess, kubernetesAccess } from './kubernetes-access.js';
import { type ClientTlsConfig, clientTls } from './tls-config.js';

/**
 * The configuration of `lethe operator`: where the PrivacyService is and how to prove who we
 * are to it, which namespaces to watch, and leader election. Read once, checked before start.
 */

export type OperatorToken =
  /** Re-read on every call: the kubelet rotates a projected ServiceAccount token in place. */
  { readonly kind: 'file'; readonly path: string } | { readonly kind: 'static'; readonly token: string };

interface LeaderElectionConfig {
  readonly enabled: boolean;
  readonly namespace: string;
  readonly name: string;
  /** This replica's identity in the Lease (the pod name in a cluster). */
  readonly identity: string;
  readonly leaseDurationMs: number;
  readonly renewDeadlineMs: number;
  readonly retryPeriodMs: number;
}

export interface OperatorConfig {
  /** host:port of the PrivacyService. */
  readonly server: string;
  /** TLS to the PrivacyService (LETHE_TLS_CA, and LETHE_TLS_CERT/KEY for mTLS); unset: plaintext. */
  readonly tls: ClientTlsConfig | undefined;
  /** How often the TLS files are read again (cert-manager renews the client certificate in place). */
  readonly tlsReloadIntervalMs: number;
  readonly token: OperatorToken;
  /** The cluster: a kubeconfig file, or the pod's own service account. */
  readonly kubernetes: KubernetesAccess;
  /** Namespaces whose PrivacyRequests are carried out; empty: all. */
  readonly namespaces: readonly string[];
  readonly concurrency: number;
  /** How often a forget waiting for downstream confirmations is looked at again. */
  readonly pollIntervalMs: number;
  /** Deadline of one call to the PrivacyService (an export of a large subject takes a while). */
  readonly callTimeoutMs: number;
  readonly leaderElection: LeaderElectionConfig;
  readonly healthListen: ListenAddress;
  readonly logLevel: LogLevel;
  /** Test only: where to crash on purpose (see src/failpoints.ts). */
  readonly failpoints: ReadonlySet<Failpoint>;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const TOKEN = /^[A-Za-z0-9._~+/=-]+$/;

const envSchema = z.object({
  LETHE_SERVER: z.string().default('127.0.0.1:50051'),
  LETHE_TOKEN_FILE: z.string().min(1).optional(),
  LETHE_TOKEN: z.string().regex(TOKEN, 'is not a JWT').optional(),
  LETHE_OPERATOR_NAMESPACES: z.string().optional(),
  LETHE_OPERATOR_CONCURRENCY: wholeNumber(1, 64, 4),
  LETHE_OPERATOR_POLL_INTERVAL: z.string().default('10s'),
  LETHE_OPERATOR_CALL_TIMEOUT: z.string().default('5m'),
  LETHE_LEADER_ELECTION: flag,
  LETHE_LEADER_ELECTION_NAMESPACE: z.string().regex(DNS_LABEL, 'must be a namespace name').optional(),
  LETHE_LEADER_ELECTION_NAME: z.string().regex(DNS_LABEL, 'must be a Lease name (a DNS label)').default('lethe-operator'),
  LETHE_LEADER_ELECTION_LEASE: z.string().default('15s'),
  LETHE_LEADER_ELECTION_RENEW_DEADLINE: z.string().default('10s'),
  LETHE_LEADER_ELECTION_RETRY: z.string().default('2s'),
  POD_NAME: z.string().min(1).max(253).optional(),
  POD_NAMESPACE: z.string().regex(DNS_LABEL, 'must be a namespace name').optional(),
  LETHE_HEALTH_LISTEN: z.string().default('127.0.0.1:8081'),
  LETHE_LOG_LEVEL: logLevel,
  LETHE_FAILPOINTS: z.string().optional(),
  LETHE_TLS_RELOAD_INTERVAL: z.string().default('10s'),
});

export function loadOperatorConfig(env: Env): Readonly<OperatorConfig> {
  const e = parseEnv(envSchema, env);
  parseListen(e.LETHE_SERVER, 'LETHE_SERVER');

  let token: OperatorToken;
  if (e.LETHE_TOKEN_FILE !== undefined && e.LETHE_TOKEN !== undefined) {
    throw new ConfigError('set either LETHE_TOKEN_FILE or LETHE_TOKEN, not both', 'LETHE_TOKEN_FILE');
  } else if (e.LETHE_TOKEN_FILE !== undefined) {
    token = { kind: 'file', path: resolve(e.LETHE_TOKEN_FILE) };
  } else if (e.LETHE_TOKEN !== undefined) {
    token = { kind: 'static', token: e.LETHE_TOKEN };
  } else {
    throw new ConfigError(
      'required: how the operator proves its identity to the PrivacyService — a projected ServiceAccount token file (audience lethe) in a cluster, or LETHE_TOKEN (e.g. $(lethe token --as lethe-operator)) outside one',
      'LETHE_TOKEN_FILE',
    );
  }

  const namespaces = commaList(e.LETHE_OPERATOR_NAMESPACES);
  for (const ns of namespaces) {
    if (!DNS_LABEL.test(ns)) throw new ConfigError(`'${ns}' is not a namespace name`, 'LETHE_OPERATOR_NAMESPACES');
  }

  const leaderElection: LeaderElectionConfig = {
    enabled: e.LETHE_LEADER_ELECTION ?? true,
    namespace: e.LETHE_LEADER_ELECTION_NAMESPACE ?? e.POD_NAMESPACE ?? 'default',
    name: e.LETHE_LEADER_ELECTION_NAME,
    identity: e.POD_NAME ?? `${hostname()}-${process.pid}`,
    leaseDurationMs: parseDuration(e.LETHE_LEADER_ELECTION_LEASE, 'LETHE_LEADER_ELECTION_LEASE'),
    renewDeadlineMs: parseDuration(e.LETHE_LEADER_ELECTION_RENEW_DEADLINE, 'LETHE_LEADER_ELECTION_RENEW_DEADLINE'),
    retryPeriodMs: parseDuration(e.LETHE_LEADER_ELECTION_RETRY, 'LETHE_LEADER_ELECTION_RETRY'),
  };
  // client-go's rules: a leader gives up at the renew deadline, which must come before its lease
  // can expire for others, and leave room for more than one retry (jittered by up to 1.2).
  if (!(leaderElection.leaseDurationMs > leaderElection.renewDeadlineMs)) {
    throw new ConfigError(
      'the lease duration must exceed the renew deadline, which must exceed the retry period (defaults 15s > 10s > 2s)',
      'LETHE_LEADER_ELECTION_LEASE',
    );
  }
  if (!(leaderElection.renewDeadlineMs > 1.2 * leaderElection.retryPeriodMs)) {
    throw new ConfigError('the renew deadline must exceed 1.2 times the retry period (defaults 15s > 10s > 2s)', 'LETHE_LEADER_ELECTION_RENEW_DEADLINE');
  }

  const pollIntervalMs = parseDuration(e.LETHE_OPERATOR_POLL_INTERVAL, 'LETHE_OPERATOR_POLL_INTERVAL');
  if (pollIntervalMs < 100) throw new ConfigError('must be at least 100ms', 'LETHE_OPERATOR_POLL_INTERVAL');
  const callTimeoutMs = parseDuration(e.LETHE_OPERATOR_CALL_TIMEOUT, 'LETHE_OPERATOR_CALL_TIMEOUT');
  if (callTimeoutMs < 1_000) throw new ConfigError('must be at least 1s', 'LETHE_OPERATOR_CALL_TIMEOUT');

  return Object.freeze({
    server: e.LETHE_SERVER,
    tls: clientTls(env),
    tlsReloadIntervalMs: tlsReloadInterval(e.LETHE_TLS_RELOAD_INTERVAL),
    token,
    kubernetes: kubernetesAccess(env, { setting: 'KUBECONFIG', why: 'the operator watches PrivacyRequests on the Kubernetes API server' }),
    namespaces,
    concurrency: e.LETHE_OPERATOR_CONCURRENCY,
    pollIntervalMs,
    callTimeoutMs,
    leaderElection,
    healthListen: parseListen(e.LETHE_HEALTH_LISTEN, 'LETHE_HEALTH_LISTEN'),
    logLevel: e.LETHE_LOG_LEVEL,
    failpoints: parseFailpoints(e.LETHE_FAILPOINTS),
  });
}
