import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import { type ChangeReceipt, type PurgeReceipt, appliedEventFor, purgedEventFor } from '../events/cloudevents.js';
import { appliedSubject, receiptSubject } from '../events/subjects.js';
import { UnavailableError } from '../errors.js';
import { errorSummary } from '../errors.js';
import type { TableRows } from '../store/ledger.js';
import { translateDatabaseError } from '../store/errors.js';

/**
 * Receipts: what a sidecar tells the ledger about one privacy request. They carry table
 * names and row counts, never values; a failure says what kind of error, never its message
 * (a database error message can quote the very data being erased).
 */

export type ReceiptStatus = PurgeReceipt['status'];

/** The CloudEvents source of a service's receipts. */
export const receiptSource = (service: string): string => `/lethe/sidecar/${service}`;

/**
 * The JetStream message id of a receipt: a redelivered event's receipt repeats the first one's
 * id, so within the stream's duplicate window the stream keeps one copy.
 */
export const receiptMsgId = (service: string, requestId: string, status: ReceiptStatus): string => `receipt:${service}:${requestId}:${status}`;

export function purgedReceipt(input: { service: string; userId: string; requestId: string; purgedAt: Date; rowsAffected: readonly TableRows[] }): PurgeReceipt {
  return {
    user_id: input.userId,
    request_id: input.requestId,
    service: input.service,
    status: 'purged',
    purged_at: input.purgedAt.toISOString(),
    rows_affected: input.rowsAffected.map((r) => ({ table: r.table, action: r.action, rows: r.rows })),
  };
}

export function failedReceipt(input: { service: string; userId: string; requestId: string; failedAt: Date; deliveries: number; error: unknown }): PurgeReceipt {
  return {
    user_id: input.userId,
    request_id: input.requestId,
    service: input.service,
    status: 'failed',
    purged_at: input.failedAt.toISOString(),
    rows_affected: [],
    error: `purge failed after ${input.deliveries} ${input.deliveries === 1 ? 'delivery' : 'deliveries'}: ${safeErrorSummary(input.error)}`,
  };
}

const SQLSTATE = /^[0-9A-Z]{5}$/;

/**
 * An error's kind without its message: `SQLSTATE 23514`, `database unavailable`,
 * `TimeoutError`. Safe for receipts and logs.
 */
export function safeErrorSummary(err: unknown): string {
  const translated = translateDatabaseError(err);
  if (translated instanceof UnavailableError) return 'database unavailable';
  const { type, code } = errorSummary(translated);
  if (code !== undefined && SQLSTATE.test(code)) return `SQLSTATE ${code}`;
  const safeType = /^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(type) ? type : 'error';
  const safeCode = code !== undefined && /^[A-Za-z0-9_.-]{1,64}$/.test(code) ? code : undefined;
  return safeCode === undefined ? safeType : `${safeType} (${safeCode})`;
}

/** Publishes a receipt and waits for the stream to have stored it (or to have it already). */
export async function publishReceipt(js: JetStreamClient, receipt: PurgeReceipt, timeoutMs: number): Promise<PubAck> {
  const event = purgedEventFor(receiptSource(receipt.service), receipt);
  return js.publish(receiptSubject(receipt.service), JSON.stringify(event), {
    msgID: receiptMsgId(receipt.service, receipt.request_id, receipt.status),
    timeout: timeoutMs,
  });
}

/** Publishes a change's receipt (applied, skipped or failed), deduplicated like a purge receipt. */
export async function publishChangeReceipt(js: JetStreamClient, receipt: ChangeReceipt, timeoutMs: number): Promise<PubAck> {
  const event = appliedEventFor(receiptSource(receipt.service), receipt);
  return js.publish(appliedSubject(receipt.service), JSON.stringify(event), {
    msgID: `change-receipt:${receipt.service}:${receipt.request_id}:${receipt.status}`,
    timeout: timeoutMs,
  });
}
