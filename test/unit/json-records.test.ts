import { describe, expect, it } from 'vitest';
import { encodeBatchResponse } from '../../src/api/export-messages.js';
import { ExportUserResponse } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { JsonRecords, JsonRecordsBuilder } from '../../src/privacy/json-records.js';
import { acceptPreEncoded, preEncoded } from '../../src/server/pre-encoded.js';

// Records under 128 bytes, up to 16 KiB, and over: one-, two- and three-byte lengths.
const RECORDS = ['{"a":1}', '{"s":"héllo 😀 日本"}', '{}', `{"long":"${'x'.repeat(300)}"}`, `{"huge":"${'é'.repeat(20_000)}"}`];

describe('JsonRecords', () => {
  it('keeps each record, and gives the records joined by commas', () => {
    const batch = JsonRecords.fromStrings(RECORDS);
    expect(batch.length).toBe(RECORDS.length);
    expect(batch.joined().toString()).toBe(RECORDS.join(','));
    expect(batch.joinInto(Buffer.alloc(10)).toString()).toBe(RECORDS.join(','));
    const scratch = Buffer.alloc(100_000);
    const text = batch.joinInto(scratch);
    expect(text.buffer).toBe(scratch.buffer);
    expect(text.toString()).toBe(RECORDS.join(','));
    expect(batch.textBytes).toBe(RECORDS.reduce((n, r) => n + Buffer.byteLength(r), 0));
  });

  it('builds the same batch from written bytes, across growth of its buffer, batch after batch', () => {
    const builder = new JsonRecordsBuilder(8);
    for (let batchNo = 0; batchNo < 3; batchNo++) {
      for (let round = 0; round < 200; round++) {
        for (const r of RECORDS) {
          builder.begin();
          const bytes = Buffer.from(r);
          builder.pushRange(bytes, 0, bytes.length);
          builder.end();
        }
      }
      const batch = builder.take();
      expect(batch.length).toBe(200 * RECORDS.length);
      expect(batch.strings().slice(0, 2 * RECORDS.length)).toEqual([...RECORDS, ...RECORDS]);
      expect(batch.joined().toString()).toBe(Array.from({ length: 200 }, () => RECORDS.join(',')).join(','));
      expect(builder.length).toBe(0);
    }
    expect(builder.take().length).toBe(0);
  });
});

describe('encodeBatchResponse', () => {
  it('writes what the generated encoder writes for the same batch, and it decodes back', () => {
    for (const service of ['', 'orders-service']) {
      const many = Array.from({ length: 500 }, (_, i) => RECORDS[i % RECORDS.length] ?? '');
      for (const records of [RECORDS, many, []]) {
        const generated = ExportUserResponse.encode(
          ExportUserResponse.fromPartial({ part: { $case: 'batch', value: { category: 'login_events', records, service } } }),
        ).finish();
        const ours = encodeBatchResponse('login_events', JsonRecords.fromStrings(records), service);
        expect(Buffer.from(ours).equals(Buffer.from(generated))).toBe(true);
        const decoded = ExportUserResponse.decode(ours);
        expect(decoded.part).toEqual({ $case: 'batch', value: { category: 'login_events', records, service } });
      }
    }
  });

  it('encodes a batch once: its header is written into the batch', () => {
    const batch = JsonRecords.fromStrings(['{"a":1}']);
    encodeBatchResponse('c', batch, '');
    expect(() => encodeBatchResponse('c', batch, '')).toThrow('a record batch is encoded once');
  });

  it('passes through a service definition only when pre-encoded', () => {
    const definition = acceptPreEncoded({ methods: { exportUser: { name: 'ExportUser', responseType: ExportUserResponse } } });
    const type = definition.methods.exportUser.responseType;
    const bytes = encodeBatchResponse('c', JsonRecords.fromStrings(['{"a":1}']), '');
    const message = preEncoded<never>(bytes);
    expect(type.encode(type.fromPartial(message) as never).finish()).toBe(bytes);
    const plain = { part: { $case: 'trailer', value: { sha256: 'ab' } } } as never;
    expect(ExportUserResponse.decode(type.encode(type.fromPartial(plain) as never).finish()).part).toMatchObject({ $case: 'trailer', value: { sha256: 'ab' } });
  });
});
