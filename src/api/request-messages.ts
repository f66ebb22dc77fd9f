import {
  ArtifactState,
  ConfirmationState,
  type DeepPartial,
  type ExportArtifact,
  type PrivacyRequest,
  ProcessingBasis,
  RequestState,
  RequestType,
} from '../gen/lethe/privacy/v1/privacy.js';
import { InvalidArgumentError } from '../errors.js';
import type { ArtifactView, PrivacyRequestView } from '../privacy/engine.js';
import type { ConfirmationStatus, RequestState as LedgerState, RequestType as LedgerType } from '../store/ledger.js';

/** Ledger entries and artifacts as API messages (the gRPC front; the HTTP front has its own documents). */

const ARTIFACT_STATES = {
  available: ArtifactState.ARTIFACT_STATE_AVAILABLE,
  expired: ArtifactState.ARTIFACT_STATE_EXPIRED,
  erased: ArtifactState.ARTIFACT_STATE_ERASED,
} as const;

const TYPE_TO_MESSAGE: Record<LedgerType, RequestType> = {
  export: RequestType.REQUEST_TYPE_EXPORT,
  forget: RequestType.REQUEST_TYPE_FORGET,
  rectify: RequestType.REQUEST_TYPE_RECTIFY,
  restrict: RequestType.REQUEST_TYPE_RESTRICT,
  lift_restriction: RequestType.REQUEST_TYPE_LIFT_RESTRICTION,
  withdraw_consent: RequestType.REQUEST_TYPE_WITHDRAW_CONSENT,
};

const CONFIRMATION_TO_MESSAGE: Record<ConfirmationStatus, ConfirmationState> = {
  purged: ConfirmationState.CONFIRMATION_STATE_PURGED,
  failed: ConfirmationState.CONFIRMATION_STATE_FAILED,
  exported: ConfirmationState.CONFIRMATION_STATE_EXPORTED,
  timed_out: ConfirmationState.CONFIRMATION_STATE_TIMED_OUT,
  applied: ConfirmationState.CONFIRMATION_STATE_APPLIED,
  skipped: ConfirmationState.CONFIRMATION_STATE_SKIPPED,
};

const STATE_TO_MESSAGE: Record<LedgerState, RequestState> = {
  running: RequestState.REQUEST_STATE_RUNNING,
  anonymized: RequestState.REQUEST_STATE_ANONYMIZED,
  applied: RequestState.REQUEST_STATE_APPLIED,
  completed: RequestState.REQUEST_STATE_COMPLETED,
  failed: RequestState.REQUEST_STATE_FAILED,
  scheduled: RequestState.REQUEST_STATE_SCHEDULED,
  cancelled: RequestState.REQUEST_STATE_CANCELLED,
};

export function fromStateMessage(state: RequestState): LedgerState | undefined {
  if (state === RequestState.REQUEST_STATE_UNSPECIFIED) return undefined;
  const found = (Object.entries(STATE_TO_MESSAGE) as Array<[LedgerState, RequestState]>).find(([, v]) => v === state);
  if (found === undefined) throw new InvalidArgumentError('state is not a known RequestState');
  return found[0];
}

export function toMessage(r: PrivacyRequestView): DeepPartial<PrivacyRequest> {
  return {
    id: r.id,
    type: TYPE_TO_MESSAGE[r.type],
    subjectId: r.subjectId,
    requester: r.requester,
    requestedBy: r.requestedBy ?? '',
    reason: r.reason,
    state: STATE_TO_MESSAGE[r.state],
    receivedAt: r.receivedAt,
    dueAt: r.dueAt,
    completedAt: r.completedAt ?? undefined,
    overdue: r.overdue,
    error: r.error ?? '',
    rowsAffected: [...r.rowsAffected],
    confirmations: [
      ...r.confirmations.map((c) => ({
        service: c.service,
        state: CONFIRMATION_TO_MESSAGE[c.status],
        purgedAt: c.purgedAt,
        rowsAffected: [...c.rowsAffected],
        error: c.error ?? '',
      })),
      ...r.pending.map((service) => ({ service, state: ConfirmationState.CONFIRMATION_STATE_PENDING })),
    ],
    artifact: r.artifact === null ? undefined : toArtifactMessage(r.artifact),
    scheduledFor: r.scheduledFor ?? undefined,
    originalDueAt: r.originalDueAt ?? undefined,
    extensionReason: r.extensionReason ?? '',
    fields: [...(r.details.fields ?? [])],
    purposes: [...(r.details.purposes ?? [])],
    basis:
      r.details.basis === undefined
        ? ProcessingBasis.PROCESSING_BASIS_UNSPECIFIED
        : r.details.basis === 'objection'
          ? ProcessingBasis.PROCESSING_BASIS_OBJECTION
          : ProcessingBasis.PROCESSING_BASIS_RESTRICTION,
  };
}

export function toArtifactMessage(a: ArtifactView): ExportArtifact {
  return {
    requestId: a.requestId,
    sha256: a.sha256,
    sizeBytes: a.sizeBytes,
    counts: a.counts.map((c) => ({ category: c.category, exported: c.exported })),
    totalRecords: a.totalRecords,
    createdAt: a.createdAt,
    expiresAt: a.expiresAt,
    state: ARTIFACT_STATES[a.state],
  };
}
