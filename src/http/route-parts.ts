import { randomUUID } from 'node:crypto';
import type { FastifyRequest } from 'fastify';

/** What the HTTP API's routes share: the error bodies, the path parameter, the Idempotency-Key header. */

const errorBody = { type: 'object', properties: { error: { type: 'string' } }, required: ['error'] } as const;
export const errors = { 400: errorBody, 401: errorBody, 403: errorBody, 404: errorBody, 409: errorBody, 429: errorBody, 503: errorBody } as const;
export const userParams = { type: 'object', properties: { user_id: { type: 'string' } }, required: ['user_id'] } as const;
export const idempotencyHeader = { type: 'object', properties: { 'idempotency-key': { type: 'string' } } } as const;

/** The request's Idempotency-Key, or a new one: without a key a repeated call is a new request. */
export function idempotencyKey(request: FastifyRequest): string {
  const key = request.headers['idempotency-key'];
  return typeof key === 'string' ? key : randomUUID();
}
