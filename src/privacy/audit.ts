import type { Knex } from 'knex';
import type { DataMap } from './data-map.js';

export interface AuditEntry {
  readonly eventType: 'user_anonymized' | 'user_data_exported';
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
