import type { FastifyInstance } from 'fastify';
import type { ConsentRecord, PrivacyEngine, ProcessingBasis } from '../privacy/engine.js';
import { requestJson } from './request-json.js';
import { errors, idempotencyHeader, idempotencyKey, userParams } from './route-parts.js';

const anyObject = { type: 'object', additionalProperties: true } as const;
const purposesBody = {
  type: 'object',
  properties: {
    purposes: { type: 'array', items: { type: 'string' } },
    basis: { type: 'string', enum: ['restriction', 'objection'] },
    reason: { type: 'string' },
  },
  required: ['purposes'],
  additionalProperties: false,
} as const;

type Params = { user_id: string };
type PurposesBody = { purposes: string[]; basis?: ProcessingBasis; reason?: string };

/**
 * Rectification, restriction, objection and consent over HTTP and JSON: the same engine calls,
 * rules and messages as the gRPC PrivacyService (rights-service.ts).
 */
export function rightsRoutes(app: FastifyInstance, engine: PrivacyEngine): void {
  app.post<{ Params: Params; Body: { changes: Record<string, string>; reason?: string } }>(
    '/api/privacy/rectify/:user_id',
    {
      schema: {
        summary: 'Correct a user’s data here and in every downstream copy (GDPR Art. 16, 19)',
        params: userParams,
        headers: idempotencyHeader,
        body: {
          type: 'object',
          properties: { changes: { type: 'object', additionalProperties: { type: 'string' } }, reason: { type: 'string' } },
          required: ['changes'],
          additionalProperties: false,
        },
        response: { 200: anyObject, ...errors },
      },
    },
    async (request) => {
      const r = await engine.rectifyUser(request.principal, {
        userId: request.params.user_id,
        changes: request.body.changes,
        reason: request.body.reason ?? '',
        idempotencyKey: idempotencyKey(request),
      });
      return { replayed: r.replayed, request: r.request === undefined ? null : requestJson(r.request) };
    },
  );

  for (const [path, lift] of [
    ['/api/privacy/restrict/:user_id', false],
    ['/api/privacy/restrict/:user_id/lift', true],
  ] as const) {
    app.post<{ Params: Params; Body: PurposesBody }>(
      path,
      {
        schema: {
          summary: lift ? 'Lift a restriction or objection for some purposes' : 'Restrict (Art. 18) or object to (Art. 21) processing for some purposes',
          params: userParams,
          headers: idempotencyHeader,
          body: purposesBody,
          response: { 200: anyObject, ...errors },
        },
      },
      async (request) => {
        const input = {
          userId: request.params.user_id,
          purposes: request.body.purposes,
          basis: request.body.basis ?? 'restriction',
          reason: request.body.reason ?? '',
          idempotencyKey: idempotencyKey(request),
        };
        const r = lift ? await engine.liftRestriction(request.principal, input) : await engine.restrictProcessing(request.principal, input);
        return { replayed: r.replayed, purposes: r.purposes, request: r.request === undefined ? null : requestJson(r.request) };
      },
    );
  }

  app.get<{ Params: Params }>(
    '/api/privacy/consents/:user_id',
    { schema: { summary: 'A user’s consent records and current choices per purpose', params: userParams, response: { 200: anyObject, ...errors } } },
    async (request) => {
      const r = await engine.listConsents(request.principal, { userId: request.params.user_id });
      return { consents: r.consents.map(consentJson), purposes: r.purposes };
    },
  );

  app.post<{ Params: Params; Body: { purpose: string; text_version: string; text_sha256?: string; source: string } }>(
    '/api/privacy/consents/:user_id',
    {
      schema: {
        summary: 'Record a consent (GDPR Art. 7): 201 when recorded, 200 when the same one was already in force',
        params: userParams,
        body: {
          type: 'object',
          properties: { purpose: { type: 'string' }, text_version: { type: 'string' }, text_sha256: { type: 'string' }, source: { type: 'string' } },
          required: ['purpose', 'text_version', 'source'],
          additionalProperties: false,
        },
        response: { 200: anyObject, 201: anyObject, ...errors },
      },
    },
    async (request, reply) => {
      const b = request.body;
      const r = await engine.recordConsent(request.principal, {
        userId: request.params.user_id,
        purpose: b.purpose,
        textVersion: b.text_version,
        textSha256: b.text_sha256 ?? '',
        source: b.source,
      });
      return reply.code(r.alreadyGiven ? 200 : 201).send({ already_given: r.alreadyGiven, consent: consentJson(r.consent), purposes: r.purposes });
    },
  );

  app.post<{ Params: Params; Body: { purposes?: string[]; source: string; reason?: string } }>(
    '/api/privacy/consents/:user_id/withdraw',
    {
      schema: {
        summary: 'Withdraw consent for some purposes, or all of them, in one call',
        params: userParams,
        body: {
          type: 'object',
          properties: { purposes: { type: 'array', items: { type: 'string' } }, source: { type: 'string' }, reason: { type: 'string' } },
          required: ['source'],
          additionalProperties: false,
        },
        response: { 200: anyObject, ...errors },
      },
    },
    async (request) => {
      const b = request.body;
      const r = await engine.withdrawConsent(request.principal, {
        userId: request.params.user_id,
        purposes: b.purposes ?? [],
        source: b.source,
        reason: b.reason ?? '',
      });
      return { withdrawn: r.withdrawn.map(consentJson), purposes: r.purposes, request: r.request === undefined ? null : requestJson(r.request) };
    },
  );
}

function consentJson(c: ConsentRecord): Record<string, unknown> {
  return {
    id: c.id,
    purpose: c.purpose,
    text_version: c.textVersion,
    text_sha256: c.textSha256,
    source: c.source,
    given_at: c.givenAt.toISOString(),
    given_by: c.givenBy,
    withdrawn_at: c.withdrawnAt?.toISOString() ?? null,
    withdrawn_by: c.withdrawnBy,
    withdrawn_source: c.withdrawnSource,
  };
}
