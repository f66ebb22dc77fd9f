import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { ANONYMIZED_TYPE, APPLIED_TYPE, PROCESSING_TYPE, PURGED_TYPE, RECTIFIED_TYPE, SERVICE_NAME } from './subjects.js';

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

const userId = z.string().min(1).max(256);
const timestamp = z.iso.datetime({ offset: true });

/** Which fields changed, never their values: a sidecar fetches those from the server (see change-values.ts). */
const rectifiedEvent = z.object({
  ...envelope,
  type: z.literal(RECTIFIED_TYPE),
  data: z.object({
    user_id: userId,
    request_id: z.uuid(),
    fields: z
      .array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/))
      .min(1)
      .max(32),
    rectified_at: timestamp,
    version: z.number().int().positive(),
  }),
});

const CONSENT_STATES = ['given', 'withdrawn', 'none'] as const;
export type ConsentState = (typeof CONSENT_STATES)[number];

/** The subject's processing choices per purpose as they now stand: whole state, so applying it twice or late is harmless. */
const purposeFlags = z.object({
  purpose: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,62}$/),
  restricted: z.boolean(),
  objected: z.boolean(),
  consent: z.enum(CONSENT_STATES),
});
export type PurposeFlags = z.infer<typeof purposeFlags>;

const processingEvent = z.object({
  ...envelope,
  type: z.literal(PROCESSING_TYPE),
  data: z.object({
    user_id: userId,
    request_id: z.uuid(),
    changed_at: timestamp,
    version: z.number().int().positive(),
    purposes: z.array(purposeFlags).max(64),
  }),
});

const appliedEvent = z.object({
  ...envelope,
  type: z.literal(APPLIED_TYPE),
  data: z.object({
    user_id: userId,
    request_id: z.uuid(),
    service: z.string().regex(SERVICE_NAME),
    kind: z.enum(['rectified', 'processing']),
    // skipped: the subject was erased here, so there was nothing to change.
    status: z.enum(['applied', 'skipped', 'failed']),
    applied_at: timestamp,
    rows_affected: rowsAffected,
    error: z.string().max(512).optional(),
  }),
});

export type RectifiedEvent = z.infer<typeof rectifiedEvent>;
export type ProcessingEvent = z.infer<typeof processingEvent>;
export type ChangeEvent = RectifiedEvent | ProcessingEvent;
export type ChangeReceipt = z.infer<typeof appliedEvent>['data'];

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
  return cloudEvent(PURGED_TYPE, source, receipt.user_id, new Date(), receipt);
}

export function rectifiedEventFor(source: string, data: RectifiedEvent['data']): RectifiedEvent {
  return cloudEvent(RECTIFIED_TYPE, source, data.user_id, new Date(data.rectified_at), data);
}

export function processingEventFor(source: string, data: ProcessingEvent['data']): ProcessingEvent {
  return cloudEvent(PROCESSING_TYPE, source, data.user_id, new Date(data.changed_at), data);
}

export function appliedEventFor(source: string, receipt: ChangeReceipt): z.infer<typeof appliedEvent> {
  return cloudEvent(APPLIED_TYPE, source, receipt.user_id, new Date(), receipt);
}

function cloudEvent<T extends string, D>(type: T, source: string, subject: string, time: Date, data: D) {
  return { specversion: '1.0' as const, id: randomUUID(), source, type, subject, time: time.toISOString(), datacontenttype: 'application/json' as const, data };
}

/** Parses an event's bytes; `undefined` for anything that is not a valid event of that type. */
export function parseAnonymizedEvent(bytes: Uint8Array): AnonymizedEvent | undefined {
  return parse(anonymizedEvent, bytes);
}

export function parsePurgedEvent(bytes: Uint8Array): PurgedEvent | undefined {
  return parse(purgedEvent, bytes);
}

const changeEvent = z.discriminatedUnion('type', [rectifiedEvent, processingEvent]);

export function parseChangeEvent(bytes: Uint8Array): ChangeEvent | undefined {
  return parse(changeEvent, bytes);
}

export function parseAppliedEvent(bytes: Uint8Array): z.infer<typeof appliedEvent> | undefined {
  return parse(appliedEvent, bytes);
}

function parse<T>(schema: z.ZodType<T>, bytes: Uint8Array): T | undefined {
  try {
    const r = schema.safeParse(JSON.parse(Buffer.from(bytes).toString('utf8')));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}
