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

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      // e.g. a client still reconnecting: try again until the deadline
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function natsClient(url: string): Promise<NatsConnection> {
  return connect({ servers: url, name: 'lethe-test', maxReconnectAttempts: -1, reconnectTimeWait: 250 });
}
