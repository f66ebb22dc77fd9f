import { Readable } from 'node:stream';
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { parseDuration } from '../config/common.js';
import { InvalidArgumentError } from '../errors.js';
import type { ExportEvent, PrivacyEngine } from '../privacy/engine.js';
import { ExportDocumentAssembler, documentBytes } from '../privacy/export-document.js';
import type { Principal } from '../privacy/principal.js';
import { OPEN_STATES, type RequestState } from '../store/ledger.js';
import type { PageTokens } from '../api/page-token.js';
import { listRequestsPage } from '../api/request-pages.js';
import { requestJson } from './request-json.js';
import { errors, idempotencyHeader, idempotencyKey, userParams } from './route-parts.js';

/** The reason recorded when the reference's DELETE comes without a body, as it does. */
const DEFAULT_FORGET_REASON = 'GDPR Art. 17 erasure request (privacy API)';
const STATES: readonly RequestState[] = [...OPEN_STATES, 'completed', 'failed', 'cancelled'];

const idParams = { type: 'object', properties: { id: { type: 'string' } }, required: ['id'] } as const;
const requestObject = { type: 'object', additionalProperties: true, description: 'A ledger entry (the gRPC PrivacyRequest in snake_case)' } as const;

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal;
  }
}

/**
 * The reference's privacy API over HTTP and JSON: the same engine, rules, messages and limits as
 * the gRPC PrivacyService. Field values are checked by the engine, so errors name the field the
 * same way on both; the route schemas describe the shapes (and the OpenAPI document).
 */
export function privacyRoutes(app: FastifyInstance, engine: PrivacyEngine, pageTokens: PageTokens): void {
  app.get<{ Params: { user_id: string } }>(
    '/api/privacy/export/:user_id',
    {
      schema: {
        summary: 'Everything held about a user, as one JSON document (GDPR Art. 15, 20)',
        description: 'The canonical export document, streamed; its SHA-256 is sent as the trailer x-lethe-sha256.',
        params: userParams,
        response: { 200: { type: 'object', additionalProperties: true }, ...errors },
      },
    },
    async (request, reply) => {
      const signal = abortOnClose(reply.raw);
      const events = engine.exportUser(request.principal, { userId: request.params.user_id, reason: '' }, signal)[Symbol.asyncIterator]();
      // The header comes before any byte is sent, so a refusal still gets its status code.
      const first = await events.next();
      if (first.done === true || first.value.kind !== 'header') throw new Error('the export ended without a header');
      let sha256 = '';
      reply.header('content-type', 'application/json; charset=utf-8').header('x-lethe-request-id', first.value.requestId);
      reply.trailer('x-lethe-sha256', async () => sha256);
      return reply.send(Readable.from(documentText(first.value, events, (digest) => (sha256 = digest))));
    },
  );

  app.delete<{ Params: { user_id: string }; Body: { reason?: string } | undefined }>(
    '/api/privacy/forget/:user_id',
    {
      schema: {
        summary: 'Anonymize a user, preserving audit logs (GDPR Art. 17)',
        description: 'A person asking for their own erasure gets 202: it is scheduled after a grace period and can be cancelled.',
        params: userParams,
        headers: idempotencyHeader,
        body: { type: ['object', 'null'], properties: { reason: { type: 'string' } }, additionalProperties: false },
        response: { 200: { type: 'object', additionalProperties: true }, 202: { type: 'object', additionalProperties: true }, ...errors },
      },
    },
    async (request, reply) => {
      const r = await engine.forgetUser(request.principal, {
        userId: request.params.user_id,
        reason: request.body?.reason ?? DEFAULT_FORGET_REASON,
        // Without a key a repeated DELETE is still safe: an anonymized subject is left as it is.
        idempotencyKey: idempotencyKey(request),
      });
      const body = { success: true, message: r.message, user_id: r.userId, request_id: r.requestId, rows_affected: r.rowsAffected };
      if (r.scheduledFor !== undefined) return reply.code(202).send({ ...body, scheduled: true, scheduled_for: r.scheduledFor.toISOString() });
      return reply.code(200).send(body);
    },
  );

  app.get<{ Querystring: { subject_id?: string; state?: string; overdue_only?: boolean; due_within?: string; page_size?: number; page_token?: string } }>(
    '/api/privacy/requests',
    {
      schema: {
        summary: 'The request ledger, newest first',
        querystring: {
          type: 'object',
          properties: {
            subject_id: { type: 'string' },
            state: { type: 'string', enum: STATES },
            overdue_only: { type: 'boolean' },
            due_within: { type: 'string', description: 'open requests due within this duration, e.g. 7d' },
            page_size: { type: 'integer' },
            page_token: { type: 'string' },
          },
          additionalProperties: false,
        },
        response: {
          200: { type: 'object', properties: { requests: { type: 'array', items: requestObject }, next_page_token: { type: 'string' } } },
          ...errors,
        },
      },
    },
    async (request) => {
      const q = request.query;
      const page = await listRequestsPage(
        engine,
        request.principal,
        {
          subjectId: q.subject_id,
          state: q.state as RequestState | undefined,
          overdueOnly: q.overdue_only === true,
          dueBefore: q.due_within === undefined ? undefined : new Date(Date.now() + duration(q.due_within, 'due_within')),
          pageSize: q.page_size ?? 0,
          pageToken: q.page_token ?? '',
        },
        pageTokens,
      );
      return { requests: page.requests.map(requestJson), next_page_token: page.nextPageToken };
    },
  );

  app.get<{ Params: { id: string } }>(
    '/api/privacy/requests/:id',
    { schema: { summary: 'One ledger entry', params: idParams, response: { 200: requestObject, ...errors } } },
    async (request) => requestJson(await engine.getRequest(request.principal, request.params.id)),
  );

  app.post<{ Params: { id: string }; Body: { reason?: string } | undefined }>(
    '/api/privacy/requests/:id/cancel',
    {
      schema: {
        summary: 'Cancel a scheduled request (a person’s own erasure during its grace period)',
        params: idParams,
        body: { type: ['object', 'null'], properties: { reason: { type: 'string' } }, additionalProperties: false },
        response: { 200: requestObject, ...errors },
      },
    },
    async (request) => requestJson(await engine.cancelRequest(request.principal, { id: request.params.id, reason: request.body?.reason ?? '' })),
  );

  app.post<{ Params: { id: string }; Body: { months: number; reason: string } }>(
    '/api/privacy/requests/:id/extend',
    {
      schema: {
        summary: 'Extend an open request’s due date once by 1 or 2 months (GDPR Art. 12(3))',
        params: idParams,
        body: {
          type: 'object',
          properties: { months: { type: 'integer' }, reason: { type: 'string' } },
          required: ['months', 'reason'],
          additionalProperties: false,
        },
        response: { 200: requestObject, ...errors },
      },
    },
    async (request) =>
      requestJson(await engine.extendRequest(request.principal, { id: request.params.id, months: request.body.months, reason: request.body.reason })),
  );
}

/** The canonical document's text as the export streams, by the one rule the CLI uses too. */
async function* documentText(
  header: Extract<ExportEvent, { kind: 'header' }>,
  events: AsyncIterator<ExportEvent>,
  onDigest: (sha256: string) => void,
): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  const assembler = new ExportDocumentAssembler(header.categories, (text) => pending.push(documentBytes(text)), header.services);
  for (let next = await events.next(); next.done !== true; next = await events.next()) {
    const done = assembler.apply(next.value);
    if (done !== undefined) onDigest(done.sha256);
    if (pending.length > 0) {
      yield Buffer.concat(pending);
      pending = [];
    }
  }
}

/** Aborts when the client goes away before the response is complete. */
function abortOnClose(response: ServerResponse): AbortSignal {
  const abort = new AbortController();
  response.once('close', () => {
    if (!response.writableFinished) abort.abort();
  });
  return abort.signal;
}

function duration(value: string, field: string): number {
  try {
    return parseDuration(value, field);
  } catch {
    throw new InvalidArgumentError(`${field} must be a duration such as 24h or 7d`);
  }
}
