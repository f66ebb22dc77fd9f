import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';

export interface StreamEvent {
  readonly subject: string;
  /** When the stream stored it (epoch ms). */
  readonly storedMs: number;
  readonly requestId: string | undefined;
}

/**
 * Every message the stream holds, fetched by sequence number (as test/support/streams.ts does,
 * which works on nats-server 2.9), `parallel` requests at a time, with the time each was stored.
 */
export async function readStream(nc: NatsConnection, stream: string, parallel = 32): Promise<StreamEvent[]> {
  const jsm = await jetstreamManager(nc);
  const { state } = await jsm.streams.info(stream);
  const out: StreamEvent[] = [];
  if (state.messages === 0) return out;
  let next = state.first_seq;
  const worker = async () => {
    while (next <= state.last_seq) {
      const seq = next++;
      const m = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
      if (m === null) continue;
      const data = (m.json<{ data?: { request_id?: unknown } }>().data ?? {}).request_id;
      out.push({ subject: m.subject, storedMs: Date.parse(m.timestamp), requestId: typeof data === 'string' ? data : undefined });
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return out;
}
