import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { ANONYMIZED_TYPE, PURGED_TYPE, SERVICE_NAME } from './subjects.js';

/**
 * CloudEvents 1.0, structured JSON mode. The subject id is the only personal datum in any
 * event; receipts carry table names and row counts, never values.
 */

const envelope = {
  specversion: z.literal('1.0'),
  id: z.string().min(1),
  source: z.string().min(1),
  subject: z.string().min(1).max(256),
  time: z.iso.datetime({ offset: true }),
  datacontenttype: z.literal('application/json'),
};

const anonymizedEvent = z.object({
  ...envelope,
  type: z.literal(ANONYMIZED_TYPE),
  data: z.object({ user_id: z.string().min(1).max(256), request_id: z.uuid(), anonymized_at: z.iso.datetime({ offset: true }) }),
});

const rowsAffected = z.array(z.object({ table: z.string(), action: z.enum(['update', 'delete']), rows: z.number().int().nonnegative() }));

const purgedEvent = z.object({
  ...envelope,
  type: z.literal(PURGED_TYPE),
  data: z.object({
    user_id: z.string().min(1).max(256),
    request_id: z.uuid(),
    service: z.string().regex(SERVICE_NAME),
    status: z.enum(['purged', 'failed']),
    purged_at: z.iso.datetime({ offset: true }),
    rows_affected: rowsAffected,
    error: z.string().max(512).optional(),
  }),
});

export type AnonymizedEvent = z.infer<typeof anonymizedEvent>;
export type PurgedEvent = z.infer<typeof purgedEvent>;
export type PurgeReceipt = PurgedEvent['data'];

export function anonymizedEventFor(input: { source: string; userId: string; requestId: string; anonymizedAt: Date }): AnonymizedEvent {
  const time = input.anonymizedAt.toISOString();
  return {
    specversion: '1.0',
    id: randomUUID(),
    source: input.source,
    type: ANONYMIZED_TYPE,
    subject: input.userId,
    time,
    datacontenttype: 'application/json',
    data: { user_id: input.userId, request_id: input.requestId, anonymized_at: time },
  };
}

export function purgedEventFor(source: string, receipt: PurgeReceipt): PurgedEvent {
  return {
    specversion: '1.0',
    id: randomUUID(),
    source,
    type: PURGED_TYPE,
    subject: receipt.user_id,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    data: receipt,
  };
}

/** Parses an event's bytes; `undefined` for anything that is not a valid event of that type. */
export function parseAnonymizedEvent(bytes: Uint8Array): AnonymizedEvent | undefined {
  return parse(anonymizedEvent, bytes);
}

export function parsePurgedEvent(bytes: Uint8Array): PurgedEvent | undefined {
  return parse(purgedEvent, bytes);
}

function parse<T>(schema: z.ZodType<T>, bytes: Uint8Array): T | undefined {
  try {
    const r = schema.safeParse(JSON.parse(Buffer.from(bytes).toString('utf8')));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}
