import type { ArtifactView, PrivacyRequestView } from '../privacy/engine.js';

/**
 * A ledger entry as the HTTP API shows it: the gRPC PrivacyRequest's fields in snake_case JSON,
 * times as RFC 3339 strings, absent values as null.
 */
export function requestJson(r: PrivacyRequestView): Record<string, unknown> {
  return {
    id: r.id,
    type: r.type,
    subject_id: r.subjectId,
    requester: r.requester,
    requested_by: r.requestedBy,
    reason: r.reason,
    state: r.state,
    received_at: iso(r.receivedAt),
    due_at: iso(r.dueAt),
    original_due_at: iso(r.originalDueAt),
    extension_reason: r.extensionReason,
    scheduled_for: iso(r.scheduledFor),
    completed_at: iso(r.completedAt),
    overdue: r.overdue,
    error: r.error,
    ...(r.details.fields === undefined ? {} : { fields: r.details.fields }),
    ...(r.details.purposes === undefined ? {} : { purposes: r.details.purposes }),
    ...(r.details.basis === undefined ? {} : { basis: r.details.basis }),
    rows_affected: r.rowsAffected,
    downstream: [
      ...r.confirmations.map((c) => ({ service: c.service, state: c.status, purged_at: iso(c.purgedAt), rows_affected: c.rowsAffected, error: c.error })),
      ...r.pending.map((service) => ({ service, state: 'pending', purged_at: null, rows_affected: [], error: null })),
    ],
    artifact: r.artifact === null ? null : artifactJson(r.artifact),
  };
}

function artifactJson(a: ArtifactView): Record<string, unknown> {
  return {
    request_id: a.requestId,
    sha256: a.sha256,
    size_bytes: a.sizeBytes,
    counts: Object.fromEntries(a.counts.map((c) => [c.category, c.exported])),
    total_records: a.totalRecords,
    created_at: iso(a.createdAt),
    expires_at: iso(a.expiresAt),
    state: a.state,
  };
}

const iso = (d: Date | null): string | null => (d === null ? null : d.toISOString());
