import { randomUUID } from 'node:crypto';
import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import type { CryptoKey } from 'jose';
import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { type ExportChunkBody, decodeChunkReply, encodeReply, openExportRequest, sealChunk } from '../events/export-protocol.js';
import { exportQueueGroup, exportRequestSubject } from '../events/subjects.js';
import type { Runnable } from '../runtime/lifecycle.js';
import { Slots } from '../runtime/slots.js';
import { snapshotTransaction } from '../store/export-session.js';
import { queriesOf } from '../store/session.js';
import type { SnapshotReader } from '../privacy/snapshot-reader.js';
import { safeErrorSummary } from './receipts.js';

/** Chunks sent ahead of the server's go-ahead. */
const WINDOW = 4;

export interface ExportResponderOptions {
  readonly nc: NatsConnection;
  readonly knex: Knex;
  readonly reader: SnapshotReader;
  readonly service: string;
  /** The server's export key (public): only requests it signed are answered. */
  readonly verifyKey: CryptoKey;
  /** Exports answered at once; more wait their turn. */
  readonly concurrency: number;
  /** How long to wait for the server's go-ahead after a chunk before giving the export up. */
  readonly ackTimeoutMs: number;
  readonly logger: Logger;
}

/**
 * The sidecar's half of a downstream export (see export-protocol.ts): takes the export requests
 * the server signed for this service, reads the service's own data map's export for the subject
 * in one snapshot, and sends it to the server's inbox chunk by chunk, each only once the server
 * took the previous one. Sends nothing to anyone but the inbox of a request the server signed,
 * and nothing but the subject's own rows, encrypted to the key in that request.
 */
export class ExportResponder implements Runnable {
  private sub: Subscription | undefined;
  private loop: Promise<void> | undefined;
  private readonly slots: Slots;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopping = new AbortController();

  constructor(private readonly o: ExportResponderOptions) {
    this.slots = new Slots(o.concurrency);
  }

  start(): void {
    const sub = this.o.nc.subscribe(exportRequestSubject(this.o.service), { queue: exportQueueGroup(this.o.service) });
    this.sub = sub;
    this.loop = (async () => {
      for await (const msg of sub) {
        const p = this.answer(msg).catch((err: unknown) => this.o.logger.error({ err: safeErrorSummary(err) }, 'export request failed'));
        this.inFlight.add(p);
        void p.finally(() => this.inFlight.delete(p));
      }
    })();
    this.o.logger.info({ subject: exportRequestSubject(this.o.service) }, 'answering export requests');
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    this.sub?.unsubscribe();
    await this.loop;
    await Promise.allSettled([...this.inFlight]);
  }

  private async answer(msg: Msg): Promise<void> {
    const o = this.o;
    let request: Awaited<ReturnType<typeof openExportRequest>>;
    try {
      request = await openExportRequest(msg.string(), o.verifyKey, o.service);
    } catch (err) {
      // Not the server's (or expired, or for another service): nothing is read, nothing sent.
      o.logger.warn({ err: safeErrorSummary(err) }, 'refused an export request that the server did not sign for this service');
      msg.respond(encodeReply({ refused: 'the request is not signed by the server for this service, or has expired' }));
      return;
    }
    const log = o.logger.child({ requestId: request.requestId });
    msg.respond(encodeReply({ accepted: true }));
    await this.slots.acquire();
    const stream = randomUUID();
    let seq = 0;
    // Up to WINDOW chunks travel before the oldest go-ahead is awaited: the two sides work at
    // once, and neither holds more than WINDOW chunks (flow control).
    const window: Array<Promise<void>> = [];
    const send = async (body: ExportChunkBody): Promise<void> => {
      const sealed = await sealChunk({ requestId: request.requestId, stream, seq: seq++, ...body }, request.encryptTo);
      const acked = o.nc.request(request.reply, sealed, { timeout: o.ackTimeoutMs }).then((m) => {
        const reply = decodeChunkReply(m.data);
        if ('stop' in reply) throw new ExportStopped(reply.stop);
      });
      acked.catch(() => undefined); // awaited below, in order
      window.push(acked);
      if (window.length >= WINDOW) await window.shift();
    };
    const flush = async (): Promise<void> => {
      for (let p = window.shift(); p !== undefined; p = window.shift()) await p;
    };
    const started = performance.now();
    let records = 0;
    const trx = await snapshotTransaction(o.knex, { readOnly: true });
    try {
      const snapshot = queriesOf(trx);
      const contents = await o.reader.contents(snapshot, request.subjectId);
      await send({ kind: 'header', categories: [...contents.categories] });
      for await (const batch of o.reader.batches(snapshot, request.subjectId, contents, this.stopping.signal)) {
        await send({ kind: 'batch', category: batch.category, records: [...batch.records.strings()] });
        records += batch.records.length;
      }
      await send({ kind: 'end', records });
      await flush();
      log.info({ records, ms: Math.round(performance.now() - started) }, 'export answered');
    } catch (err) {
      if (err instanceof ExportStopped) {
        log.warn({ reason: err.message }, 'the server stopped the export');
        return;
      }
      const reason = safeErrorSummary(err);
      log.warn({ err: reason, records }, 'export failed');
      // Tell the server why, if it still listens; it records the failure either way.
      await send({ kind: 'error', reason: `the sidecar could not read its data: ${reason}` })
        .then(flush)
        .catch(() => undefined);
    } finally {
      await trx.rollback().catch(() => undefined);
      this.slots.release();
    }
  }
}

class ExportStopped extends Error {
  override readonly name = 'ExportStopped';
}
