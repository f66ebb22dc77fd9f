import { randomUUID } from 'node:crypto';
import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import type { CryptoKey } from 'jose';
import { type ExportChunkBody, decodeChunkReply, encodeReply, openExportRequest, sealChunk } from '../../src/events/export-protocol.js';
import { exportRequestSubject } from '../../src/events/subjects.js';

/**
 * A misbehaving sidecar for the fault tests: it speaks the export protocol (it verifies the
 * server's request and encrypts to its key) but answers as `behaviour` says.
 */
export type FakeBehaviour =
  /** A header and one batch, then silence: a sidecar that died in the middle. */
  | 'dies-mid-stream'
  /** Accepts, then sends a chunk that is not encrypted to the server's key. */
  | 'malformed'
  /** A batch of records that are not JSON objects. */
  | 'not-objects'
  /** A chunk larger than NATS's default max_payload allows a chunk to be. */
  | 'oversized'
  /** Accepts and never sends anything. */
  | 'never-starts'
  /** Answers completely, and a second, different answer to the same request at the same time. */
  | 'answers-twice'
  /** Answers completely, pausing a second before each chunk (within the timeout each time). */
  | 'slow';

export const FAKE_RECORDS = ['{"query":"first"}', '{"query":"second"}'];

export class FakeExportSidecar {
  private readonly subs: Subscription[] = [];
  /** Every reply the server gave to a chunk: what it said to the second answer, say. */
  readonly replies: string[] = [];

  constructor(
    private readonly nc: NatsConnection,
    private readonly service: string,
    private readonly verifyKey: CryptoKey,
    private readonly behaviour: FakeBehaviour,
    /** Called as each request arrives, before it is answered. */
    private readonly onRequest: () => Promise<void> = async () => undefined,
  ) {
    const sub = nc.subscribe(exportRequestSubject(service));
    this.subs.push(sub);
    void (async () => {
      for await (const msg of sub) void this.answer(msg).catch(() => undefined);
    })();
  }

  stop(): void {
    for (const s of this.subs) s.unsubscribe();
  }

  private async answer(msg: Msg): Promise<void> {
    await this.onRequest();
    const r = await openExportRequest(msg.string(), this.verifyKey, this.service);
    msg.respond(encodeReply({ accepted: true }));
    const stream = (id = randomUUID()) => {
      let seq = 0;
      return async (body: ExportChunkBody | 'garbage' | 'huge') => {
        const data =
          body === 'garbage'
            ? 'not a JWE'
            : body === 'huge'
              ? 'x'.repeat(800 * 1024)
              : await sealChunk({ requestId: r.requestId, stream: id, seq: seq++, ...body }, r.encryptTo);
        const reply = await this.nc.request(r.reply, data, { timeout: 5_000 });
        const decoded = decodeChunkReply(reply.data);
        this.replies.push(JSON.stringify(decoded));
        return decoded;
      };
    };
    const header: ExportChunkBody = {
      kind: 'header',
      categories: [{ name: 'searches', documentKey: 'searches', shape: 'list', totalCount: 2, limit: 0 }],
    };
    const send = stream();
    switch (this.behaviour) {
      case 'never-starts':
        return;
      case 'malformed':
        await send('garbage');
        return;
      case 'oversized':
        await send('huge').catch(() => undefined);
        return;
      case 'not-objects':
        await send(header);
        await send({ kind: 'batch', category: 'searches', records: ['"just a string"'] });
        return;
      case 'dies-mid-stream':
        await send(header);
        await send({ kind: 'batch', category: 'searches', records: [FAKE_RECORDS[0] ?? ''] });
        this.stop();
        return;
      case 'slow': {
        const pause = () => new Promise((resolve) => setTimeout(resolve, 1_000));
        for (const body of [header, { kind: 'batch', category: 'searches', records: FAKE_RECORDS }, { kind: 'end', records: FAKE_RECORDS.length }] as const) {
          await pause();
          await send(body);
        }
        return;
      }
      case 'answers-twice': {
        const second = stream();
        await send(header);
        await second(header);
        await send({ kind: 'batch', category: 'searches', records: FAKE_RECORDS });
        await send({ kind: 'end', records: FAKE_RECORDS.length });
        return;
      }
    }
  }
}
