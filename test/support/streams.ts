import { vi } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';

export interface Stored {
  readonly seq: number;
  readonly subject: string;
  readonly msgId: string | undefined;
  readonly json: Record<string, unknown>;
}

/** Every message the stream holds, read one by one (works on nats-server 2.9). */
export async function storedMessages(nc: NatsConnection, stream: string, subjectPrefix = ''): Promise<Stored[]> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(stream);
  const out: Stored[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
    if (m === null || !m.subject.startsWith(subjectPrefix)) continue;
    out.push({ seq, subject: m.subject, msgId: m.header?.get('Nats-Msg-Id') || undefined, json: m.json<Record<string, unknown>>() });
  }
  return out;
}

/**
 * Polls `probe` until it gives a value (not undefined or false), through vitest's own
 * vi.waitFor, the suite's one polling mechanism: a probe that throws (a client still
 * reconnecting) is tried again until the timeout, whose error names what was awaited.
 */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  return vi.waitFor(
    async () => {
      const v = await probe();
      if (v === undefined || v === false) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      return v;
    },
    { timeout: timeoutMs, interval: 100 },
  );
}

export function natsClient(url: string): Promise<NatsConnection> {
  return connect({ servers: url, name: 'lethe-test', maxReconnectAttempts: -1, reconnectTimeWait: 250 });
}
