import type { Knex } from 'knex';
import type { DataMap } from './data-map.js';
import { quoteIdent } from './sql.js';

/**
 * What Lethe records in the platform's audit table. Details hold references (request ids,
 * outcomes) and the request's reason; the default data map's forget keeps only the references.
 */
export type AuditEventType =
  | 'user_anonymized'
  | 'user_already_anonymized'
  | 'user_data_exported'
  | 'user_data_export_cancelled'
  | 'user_data_export_failed'
  | 'user_data_export_stored'
  | 'export_artifact_read'
  | 'export_artifact_read_cancelled'
  | 'export_artifact_read_failed'
  | 'user_erasure_scheduled'
  | 'user_erasure_cancelled'
  | 'privacy_request_extended'
  | 'user_rectified'
  | 'processing_restricted'
  | 'processing_restriction_lifted'
  | 'consent_given'
  | 'consent_withdrawn';

export interface AuditEntry {
  readonly eventType: AuditEventType;
  readonly actorId: string;
  readonly targetId: string;
  readonly details: Readonly<Record<string, unknown>>;
  readonly timestamp: Date;
}

/** An audit entry as part of a larger statement (the forget's); none when the data map has no audit table. */
export function auditPart(map: DataMap, entry: AuditEntry): { table: string; sql: string; bindings: Knex.RawBinding[] } | undefined {
  const a = map.audit;
  if (a === undefined) return undefined;
  const columns = [a.event_type_column, a.actor_column, a.target_column, a.details_column, a.timestamp_column].map(quoteIdent);
  return {
    table: a.table,
    sql: `INSERT INTO ${quoteIdent(a.table)} (${columns.join(', ')}) VALUES (?, ?, ?, ?, ?)`,
    bindings: [entry.eventType, entry.actorId, entry.targetId, JSON.stringify(entry.details), entry.timestamp],
  };
}

/** Writes an audit entry into the data map's audit table, when it has one. */
export async function writeAudit(db: Knex | Knex.Transaction, map: DataMap, entry: AuditEntry): Promise<void> {
  const a = map.audit;
  if (a === undefined) return;
  await db(a.table).insert({
    [a.event_type_column]: entry.eventType,
    [a.actor_column]: entry.actorId,
    [a.target_column]: entry.targetId,
    [a.details_column]: JSON.stringify(entry.details),
    [a.timestamp_column]: entry.timestamp,
  });
}
