import type { CallContext } from 'nice-grpc';
import { toCategoryMessage, toOutcomeMessage } from '../api/export-messages.js';
import { InvalidArgumentError } from '../errors.js';
import {
  ArtifactState,
  ConfirmationState,
  type DeepPartial,
  type ExportArtifact,
  type ExportUserRequest,
  type ExportUserResponse,
  type ForgetUserRequest,
  type ForgetUserResponse,
  type GetExportArtifactRequest,
  type GetExportArtifactResponse,
  type StoreExportRequest,
  type StoreExportResponse,
  type GetPrivacyRequestRequest,
  type GetPrivacyRequestResponse,
  type ListPrivacyRequestsRequest,
  type ListPrivacyRequestsResponse,
  type PrivacyRequest,
  type PrivacyServiceImplementation,
  RequestState,
  RequestType,
  type CancelPrivacyRequestRequest,
  type CancelPrivacyRequestResponse,
  type ExtendPrivacyRequestRequest,
  type ExtendPrivacyRequestResponse,
} from '../gen/lethe/privacy/v1/privacy.js';
import type { ArtifactView, ExportEvent, PrivacyEngine, PrivacyRequestView } from '../privacy/engine.js';
import type { ConfirmationStatus, RequestState as LedgerState } from '../store/ledger.js';
import type { AuthContext } from './middleware.js';
import type { PageTokens } from '../api/page-token.js';
import { listRequestsPage } from '../api/request-pages.js';

/** The gRPC front end: translates messages to engine calls and back, nothing more. */
const ARTIFACT_STATES = {
  available: ArtifactState.ARTIFACT_STATE_AVAILABLE,
  expired: ArtifactState.ARTIFACT_STATE_EXPIRED,
  erased: ArtifactState.ARTIFACT_STATE_ERASED,
} as const;

export function privacyService(engine: PrivacyEngine, pageTokens: PageTokens): PrivacyServiceImplementation<AuthContext> {
  return {
    async *exportUser(request: ExportUserRequest, context: CallContext & AuthContext): AsyncGenerator<DeepPartial<ExportUserResponse>> {
      const events = engine.exportUser(context.principal, { userId: request.userId, reason: request.reason }, context.signal);
      for await (const event of events) yield toExportMessage(event);
    },

    async forgetUser(request: ForgetUserRequest, context: CallContext & AuthContext): Promise<DeepPartial<ForgetUserResponse>> {
      const r = await engine.forgetUser(context.principal, {
        userId: request.userId,
        reason: request.reason,
        idempotencyKey: request.idempotencyKey,
        requestedBy: request.requestedBy,
      });
      return {
        success: true,
        message: r.message,
        userId: r.userId,
        requestId: r.requestId,
        rowsAffected: [...r.rowsAffected],
        replayed: r.replayed,
        scheduled: r.scheduledFor !== undefined,
        scheduledFor: r.scheduledFor,
      };
    },

    async getPrivacyRequest(request: GetPrivacyRequestRequest, context: CallContext & AuthContext): Promise<DeepPartial<GetPrivacyRequestResponse>> {
      return { request: toMessage(await engine.getRequest(context.principal, request.id)) };
    },

    async listPrivacyRequests(request: ListPrivacyRequestsRequest, context: CallContext & AuthContext): Promise<DeepPartial<ListPrivacyRequestsResponse>> {
      const page = await listRequestsPage(
        engine,
        context.principal,
        {
          subjectId: request.subjectId === '' ? undefined : request.subjectId,
          state: fromStateMessage(request.state),
          overdueOnly: request.overdueOnly,
          dueBefore: request.dueBefore,
          pageSize: request.pageSize,
          pageToken: request.pageToken,
        },
        pageTokens,
      );
      return { requests: page.requests.map(toMessage), nextPageToken: page.nextPageToken };
    },

    async cancelPrivacyRequest(request: CancelPrivacyRequestRequest, context: CallContext & AuthContext): Promise<DeepPartial<CancelPrivacyRequestResponse>> {
      return { request: toMessage(await engine.cancelRequest(context.principal, { id: request.id, reason: request.reason })) };
    },

    async extendPrivacyRequest(request: ExtendPrivacyRequestRequest, context: CallContext & AuthContext): Promise<DeepPartial<ExtendPrivacyRequestResponse>> {
      return { request: toMessage(await engine.extendRequest(context.principal, { id: request.id, months: request.months, reason: request.reason })) };
    },

    async storeExport(request: StoreExportRequest, context: CallContext & AuthContext): Promise<DeepPartial<StoreExportResponse>> {
      const r = await engine.storeExport(
        context.principal,
        { userId: request.userId, reason: request.reason, idempotencyKey: request.idempotencyKey, requestedBy: request.requestedBy },
        context.signal,
      );
      return { requestId: r.requestId, artifact: toArtifactMessage(r.artifact), replayed: r.replayed };
    },

    async *getExportArtifact(request: GetExportArtifactRequest, context: CallContext & AuthContext): AsyncGenerator<DeepPartial<GetExportArtifactResponse>> {
      for await (const part of engine.exportArtifact(context.principal, request.requestId, context.signal)) {
        yield part.kind === 'artifact'
          ? { part: { $case: 'artifact', value: toArtifactMessage(part.artifact) } }
          : { part: { $case: 'chunk', value: part.bytes } };
      }
    },
  };
}

function toExportMessage(event: ExportEvent): DeepPartial<ExportUserResponse> {
  switch (event.kind) {
    case 'header':
      return {
        part: {
          $case: 'header',
          value: {
            userId: event.userId,
            requestId: event.requestId,
            generatedAt: event.generatedAt,
            categories: event.categories.map(toCategoryMessage),
            downstreamServices: [...event.services],
          },
        },
      };
    case 'section':
      return { part: { $case: 'section', value: { service: event.service, categories: event.categories.map(toCategoryMessage) } } };
    case 'batch':
      return { part: { $case: 'batch', value: { category: event.category, records: event.records, service: event.service ?? '' } } };
    case 'progress':
      return { part: { $case: 'progress', value: toOutcomeMessage(event.outcome) } };
    case 'trailer':
      return {
        part: {
          $case: 'trailer',
          value: {
            counts: [...event.counts].map(([category, exported]) => ({ category, exported })),
            sha256: event.sha256,
            totalRecords: event.totalRecords,
            downstream: event.downstream.map(toOutcomeMessage),
            partial: event.partial,
          },
        },
      };
  }
}

const CONFIRMATION_TO_MESSAGE: Record<ConfirmationStatus, ConfirmationState> = {
  purged: ConfirmationState.CONFIRMATION_STATE_PURGED,
  failed: ConfirmationState.CONFIRMATION_STATE_FAILED,
  exported: ConfirmationState.CONFIRMATION_STATE_EXPORTED,
  timed_out: ConfirmationState.CONFIRMATION_STATE_TIMED_OUT,
};

const STATE_TO_MESSAGE: Record<LedgerState, RequestState> = {
  running: RequestState.REQUEST_STATE_RUNNING,
  anonymized: RequestState.REQUEST_STATE_ANONYMIZED,
  completed: RequestState.REQUEST_STATE_COMPLETED,
  failed: RequestState.REQUEST_STATE_FAILED,
  scheduled: RequestState.REQUEST_STATE_SCHEDULED,
  cancelled: RequestState.REQUEST_STATE_CANCELLED,
};

function fromStateMessage(state: RequestState): LedgerState | undefined {
  if (state === RequestState.REQUEST_STATE_UNSPECIFIED) return undefined;
  const found = (Object.entries(STATE_TO_MESSAGE) as Array<[LedgerState, RequestState]>).find(([, v]) => v === state);
  if (found === undefined) throw new InvalidArgumentError('state is not a known RequestState');
  return found[0];
}

function toMessage(r: PrivacyRequestView): DeepPartial<PrivacyRequest> {
  return {
    id: r.id,
    type: r.type === 'export' ? RequestType.REQUEST_TYPE_EXPORT : RequestType.REQUEST_TYPE_FORGET,
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
  };
}

function toArtifactMessage(a: ArtifactView): ExportArtifact {
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
