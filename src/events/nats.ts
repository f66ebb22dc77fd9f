import { type JetStreamManager, JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection, TlsOptions } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import { describeTlsFailure } from '../tls/tls-errors.js';
import { STREAM_SUBJECTS } from './subjects.js';

export interface StreamSettings {
  readonly name: string;
  readonly replicas: number;
  readonly duplicateWindowMs: number;
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
  };
  let nc: NatsConnection;
  try {
    // A first attempt that fails fast, so that the reason is logged once: waiting for the first
    // connection reports nothing, and a NATS that refuses our TLS would look like one that is away.
    nc = await connect(options);
  } catch (err) {
    const tlsFailure = describeTlsFailure(err);
    logger.warn(
      { nats: describeNatsUrl(url), ...(tlsFailure === undefined ? { error: errorSummary(err) } : { tls: `${tlsFailure}; check LETHE_NATS_TLS_CA (and LETHE_NATS_TLS_CERT/KEY)` }) },
      'cannot connect to NATS yet: retrying until it answers',
    );
    nc = await connect({ ...options, waitOnFirstConnect: true });
  }
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect') logger.info({ nats: s.type }, 'nats connection');
    }
  })();
  return nc;
}

/** Creates the privacy stream when absent; an existing stream is left as its owner configured it. */
export async function ensureStream(nc: NatsConnection, s: StreamSettings): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(s.name);
  } catch (err) {
    // 404: no such stream.
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    await jsm.streams.add({
      name: s.name,
      subjects: [STREAM_SUBJECTS],
      num_replicas: s.replicas,
      duplicate_window: s.duplicateWindowMs * 1_000_000,
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
