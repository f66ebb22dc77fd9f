import type { CallContext } from 'nice-grpc';
import { encodeBatchResponse, toCategoryMessage, toOutcomeMessage } from '../api/export-messages.js';
import {
  type DeepPartial,
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
  type PrivacyServiceImplementation,
  type CancelPrivacyRequestRequest,
  type CancelPrivacyRequestResponse,
  type ExtendPrivacyRequestRequest,
  type ExtendPrivacyRequestResponse,
} from '../gen/lethe/privacy/v1/privacy.js';
import type { ExportEvent, PrivacyEngine } from '../privacy/engine.js';
import type { AuthContext } from './middleware.js';
import type { PageTokens } from '../api/page-token.js';
import { listRequestsPage } from '../api/request-pages.js';
import { fromStateMessage, toArtifactMessage, toMessage } from '../api/request-messages.js';
import { rightsHandlers } from './rights-service.js';
import { preEncoded } from './pre-encoded.js';

/** The gRPC front end: translates messages to engine calls and back, nothing more. */

export function privacyService(engine: PrivacyEngine, pageTokens: PageTokens): PrivacyServiceImplementation<AuthContext> {
  return {
    ...rightsHandlers(engine),
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
        request: request.includeRequest ? toMessage(await engine.forgetRequest(context.principal, r)) : undefined,
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
      return {
        requestId: r.requestId,
        artifact: toArtifactMessage(r.artifact),
        replayed: r.replayed,
        request: request.includeRequest ? toMessage(await engine.getRequest(context.principal, r.requestId)) : undefined,
      };
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
      return preEncoded(encodeBatchResponse(event.category, event.records, event.service ?? ''));
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
