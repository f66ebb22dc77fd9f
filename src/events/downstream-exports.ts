import { type Msg, type NatsConnection, createInbox, errors } from '@nats-io/nats-core';
import type { CryptoKey } from 'jose';
import { errorSummary } from '../errors.js';
import type { DownstreamExportEvent, DownstreamExportSource, DownstreamOutcome } from '../privacy/downstream.js';
import type { SnapshotCategory } from '../privacy/snapshot-reader.js';
import { ChunkRejected, type ExportChunk, decodeRequestReply, encodeReply, openChunk, sealExportRequest } from './export-protocol.js';
import { exportRequestSubject } from './subjects.js';

export interface DownstreamExportsOptions {
  /** The connection, once there is one (it is made in the background). */
  readonly connection: () => NatsConnection | undefined;
  /** The server's Ed25519 export key (private): sidecars answer only what it signed. */
  readonly signingKey: CryptoKey;
  /** How long a service has to answer, and to send each next chunk once asked for it. */
  readonly timeoutMs: number;
}

/**
 * The server's half of a downstream export (see export-protocol.ts): asks one service's sidecars
 * for the subject's rows and yields them as they come, asking for each next chunk only once the
 * caller took the previous one. Whatever a sidecar does (never answers, answers twice, sends
 * something malformed or too large, dies in the middle), the generator ends within the timeout
 * with an outcome that says what happened, without any of the data in it.
 */
export class DownstreamExports implements DownstreamExportSource {
  constructor(private readonly o: DownstreamExportsOptions) {}

  async *exportFrom(service: string, r: { subjectId: string; requestId: string }, signal: AbortSignal): AsyncGenerator<DownstreamExportEvent> {
    const nc = this.o.connection();
    if (nc === undefined || nc.isClosed()) {
      yield failed(service, 'NATS is not connected: the service could not be asked', 0);
      return;
    }
    const inbox = createInbox();
    const sub = nc.subscribe(inbox);
    const messages = sub[Symbol.asyncIterator]();
    let records = 0;
    try {
      const { token, decryptionKey } = await sealExportRequest(this.o.signingKey, { ...r, service, reply: inbox });
      const refusal = await this.ask(nc, service, token);
      if (refusal !== undefined) {
        yield refusal;
        return;
      }
      let stream: string | undefined;
      let seq = 0;
      let categories: readonly SnapshotCategory[] | undefined;
      let categoryIndex = -1;
      for (;;) {
        const next = await nextWithin(messages, this.o.timeoutMs, signal);
        if (next === 'timeout') {
          yield timedOut(
            service,
            stream === undefined ? `did not start its answer within ${this.o.timeoutMs / 1000}s` : `stopped answering for ${this.o.timeoutMs / 1000}s`,
            records,
          );
          return;
        }
        if (next === undefined) {
          yield failed(service, 'the answer was cut off', records);
          return;
        }
        let chunk: ExportChunk;
        try {
          chunk = await openChunk(next.data, decryptionKey);
          if (chunk.requestId !== r.requestId) throw new ChunkRejected('a chunk of another export');
        } catch (err) {
          const reason = err instanceof ChunkRejected ? err.message : `an unreadable chunk (${errorSummary(err).type})`;
          next.respond(encodeReply({ stop: reason }));
          yield failed(service, `sent ${reason}`, records);
          return;
        }
        if (stream === undefined && chunk.seq === 0) stream = chunk.stream;
        if (chunk.stream !== stream) {
          // A second sidecar answering the same request: the first answer stands.
          next.respond(encodeReply({ stop: 'another sidecar is already answering this export' }));
          continue;
        }
        if (chunk.seq < seq) {
          // A chunk sent again (its go-ahead was lost): already handed on.
          next.respond(encodeReply({ ok: true }));
          continue;
        }
        if (chunk.seq > seq) {
          next.respond(encodeReply({ stop: 'chunks out of order' }));
          yield failed(service, `sent chunk ${chunk.seq} where chunk ${seq} was due`, records);
          return;
        }
        seq++;
        if (chunk.kind === 'header') {
          if (categories !== undefined) return yield* this.reject(next, service, 'a second header', records);
          categories = chunk.categories;
          yield { kind: 'section', service, categories: chunk.categories };
        } else if (chunk.kind === 'batch') {
          const at = categories?.findIndex((c) => c.name === chunk.category) ?? -1;
          const c = categories?.[at];
          if (c === undefined || at < categoryIndex) return yield* this.reject(next, service, 'records of a category not announced, or out of order', records);
          if (!chunk.records.every(isJsonObject)) return yield* this.reject(next, service, 'a record that is not a JSON object', records);
          if (c.shape === 'object' && (at === categoryIndex || chunk.records.length > 1))
            return yield* this.reject(next, service, `more than one record for object category ${c.name}`, records);
          categoryIndex = at;
          // The go-ahead waits until the caller took these records: flow control.
          yield { kind: 'batch', service, category: chunk.category, records: chunk.records };
          records += chunk.records.length;
        } else if (chunk.kind === 'end') {
          next.respond(encodeReply({ ok: true }));
          if (categories === undefined) yield failed(service, 'ended its answer without a header', records);
          else if (chunk.records !== records) yield failed(service, `announced ${chunk.records} records but sent ${records}`, records);
          else yield { kind: 'outcome', outcome: { service, status: 'complete', records } };
          return;
        } else {
          next.respond(encodeReply({ ok: true }));
          yield failed(service, chunk.reason, records);
          return;
        }
        next.respond(encodeReply({ ok: true }));
      }
    } finally {
      sub.unsubscribe();
    }
  }

  /** Sends the request; undefined when a sidecar accepted it, else the outcome that says why not. */
  private async ask(nc: NatsConnection, service: string, token: string): Promise<DownstreamExportEvent | undefined> {
    let reply: Msg;
    try {
      reply = await nc.request(exportRequestSubject(service), token, { timeout: this.o.timeoutMs });
    } catch (err) {
      if (err instanceof errors.RequestError && err.isNoResponders()) return failed(service, 'no sidecar of the service is listening for exports', 0);
      if (err instanceof errors.TimeoutError || (err instanceof errors.RequestError && err.cause instanceof errors.TimeoutError))
        return timedOut(service, `did not accept the request within ${this.o.timeoutMs / 1000}s`, 0);
      return failed(service, `the request could not be sent (${errorSummary(err).type})`, 0);
    }
    try {
      const answer = decodeRequestReply(reply.data);
      return 'refused' in answer ? failed(service, `refused the request: ${answer.refused}`, 0) : undefined;
    } catch {
      return failed(service, 'answered the request with something that is not a Lethe reply', 0);
    }
  }

  private *reject(msg: Msg, service: string, what: string, records: number): Generator<DownstreamExportEvent> {
    msg.respond(encodeReply({ stop: `sent ${what}` }));
    yield failed(service, `sent ${what}`, records);
  }
}

const failed = (service: string, error: string, records: number): DownstreamExportEvent => outcome({ service, status: 'failed', error, records });
const timedOut = (service: string, error: string, records: number): DownstreamExportEvent => outcome({ service, status: 'timed_out', error, records });
const outcome = (o: DownstreamOutcome): DownstreamExportEvent => ({ kind: 'outcome', outcome: o });

function isJsonObject(text: string): boolean {
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === 'object' && v !== null && !Array.isArray(v);
  } catch {
    return false;
  }
}

/** The next message, `'timeout'` when none came within `ms`, undefined when the subscription ended. */
async function nextWithin(messages: AsyncIterator<Msg>, ms: number, signal: AbortSignal): Promise<Msg | 'timeout' | undefined> {
  signal.throwIfAborted();
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      messages.next().then((n) => (n.done === true ? undefined : n.value)),
      new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), ms);
      }),
      new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort);
  }
}
