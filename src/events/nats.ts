import { type JetStreamManager, JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import { type NatsConnection, type Status, type TlsOptions, nanos } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import { sleep } from '../runtime/backoff.js';
import { describeTlsFailure } from '../runtime/tls-errors.js';
import { STREAM_SUBJECTS } from './subjects.js';

export interface StreamSettings {
  readonly name: string;
  readonly replicas: number;
  readonly duplicateWindowMs: number;
  /** How long the stream keeps a message (events, receipts): each holds a subject id. */
  readonly maxAgeMs: number;
}

/**
 * Connects to NATS and keeps reconnecting for ever: a NATS that is away delays events, it
 * never stops Lethe. The promise resolves on the first successful connection. `tls` (from
 * natsTlsOptions) makes TLS required, as does a tls:// URL.
 */
export async function connectNats(url: string, name: string, logger: Logger, tls?: TlsOptions): Promise<NatsConnection> {
  const options = {
    servers: url,
    name,
    ...(tls === undefined ? {} : { tls }),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1_000,
    pingInterval: 10_000,
    // No stack captured for every request and publish ahead of a failure that rarely comes: errors are logged by kind only.
    noAsyncTraces: true,
  };
  let nc: NatsConnection;
  try {
    // A first attempt that fails fast, so that the reason is logged once: waiting for the first
    // connection reports nothing, and a NATS that refuses our TLS would look like one that is away.
    nc = await connect(options);
  } catch (err) {
    const tlsFailure = describeTlsFailure(err);
    logger.warn(
      {
        nats: describeNatsUrl(url),
        ...(tlsFailure === undefined ? { error: errorSummary(err) } : { tls: `${tlsFailure}; check LETHE_NATS_TLS_CA (and LETHE_NATS_TLS_CERT/KEY)` }),
      },
      'cannot connect to NATS yet: retrying until it answers',
    );
    nc = await connect({ ...options, waitOnFirstConnect: true });
  }
  void (async () => {
    for await (const s of nc.status()) logNatsStatus(logger, s);
  })();
  return nc;
}

/**
 * Drains the connection (pending publishes and subscriptions finish), or closes it when the
 * drain takes longer than `timeoutMs`. Never rejects.
 */
export async function closeNats(nc: NatsConnection, timeoutMs: number): Promise<void> {
  if (nc.isClosed()) return;
  const timer = new AbortController();
  const drained = await Promise.race([
    nc.drain().then(
      () => true,
      () => false,
    ),
    sleep(timeoutMs, timer.signal).then(() => false),
  ]);
  timer.abort();
  if (!drained && !nc.isClosed()) await nc.close().catch(() => undefined);
}

/**
 * The client's status events as JSON log lines: connection changes at info, trouble (server
 * errors, a stale connection, a slow consumer, lame-duck mode) at warn, by class and code only.
 * Pings and cluster updates are routine.
 */
export function logNatsStatus(logger: Logger, s: Status): void {
  switch (s.type) {
    case 'disconnect':
    case 'reconnect':
    case 'close':
      logger.info({ nats: s.type }, 'nats connection');
      return;
    case 'error':
      logger.warn({ nats: s.type, err: errorSummary(s.error) }, 'nats error');
      return;
    case 'ldm':
    case 'staleConnection':
    case 'forceReconnect':
      logger.warn({ nats: s.type }, 'nats connection');
      return;
    case 'slowConsumer':
      logger.warn({ nats: s.type, pending: s.pending }, 'nats slow consumer');
      return;
    default:
      return;
  }
}

/**
 * Creates the privacy stream when absent. An existing stream is left as its owner configured
 * it, except that one without an age limit (made before Lethe set one) gets `maxAgeMs`: every
 * message holds a subject id, and none may stay for ever.
 */
export async function ensureStream(nc: NatsConnection, s: StreamSettings, logger?: Logger): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc);
  const maxAge = nanos(s.maxAgeMs);
  try {
    const { config } = await jsm.streams.info(s.name);
    if (config.max_age === 0) {
      await jsm.streams.update(s.name, { ...config, max_age: maxAge });
      logger?.info({ stream: s.name, maxAgeMs: s.maxAgeMs }, 'the stream had no age limit: set one');
    }
  } catch (err) {
    // 404: no such stream.
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    await jsm.streams.add({
      name: s.name,
      subjects: [STREAM_SUBJECTS],
      num_replicas: s.replicas,
      duplicate_window: nanos(s.duplicateWindowMs),
      max_age: maxAge,
    });
  }
  return jsm;
}

/** nats://user:secret@host:4222 → nats://host:4222 (safe to log); each of a comma-separated list. */
export function describeNatsUrl(url: string): string {
  return url
    .split(',')
    .map((one) => {
      try {
        const u = new URL(one.trim());
        return `${u.protocol}//${u.host}`;
      } catch {
        return 'nats (unparseable URL)';
      }
    })
    .join(',');
}
