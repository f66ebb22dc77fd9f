import type { Knex } from 'knex';
import type { DataMap } from './data-map.js';

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
