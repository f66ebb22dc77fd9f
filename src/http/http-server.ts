import cors from '@fastify/cors';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import type { Server as HttpsServer } from 'node:https';
import type { ServerCredentials } from '@grpc/grpc-js';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Verifier } from '../auth/verifier.js';
import { type ErrorCode, LetheError, errorSummary } from '../errors.js';
import type { PrivacyEngine } from '../privacy/engine.js';
import type { PageTokens } from '../api/page-token.js';
import { privacyRoutes } from './routes.js';
import { rightsRoutes } from './rights-routes.js';

export interface HttpOptions {
  readonly engine: PrivacyEngine;
  readonly verify: Verifier;
  readonly pageTokens: PageTokens;
  readonly logger: Logger;
  readonly host: string;
  readonly port: number;
  /** Origins allowed by CORS; empty: CORS off (no Access-Control-* headers at all). */
  readonly corsOrigins: readonly string[];
  /** Requests per minute per client address. */
  readonly rateLimitPerMinute: number;
  readonly version: string;
  /** The gRPC server's TLS credentials: the API is served over HTTPS with the same certificate (and client CA), rotated with it. */
  readonly tls?: ServerCredentials | undefined;
}

export interface HttpServer {
  readonly port: number;
  close(): Promise<void>;
}

/** The reference's HTTP status for each domain error. */
const HTTP_STATUS: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  FAILED_PRECONDITION: 409,
  ABORTED: 409,
  RESOURCE_EXHAUSTED: 429,
  CANCELLED: 499,
  UNAVAILABLE: 503,
  DATA_LOSS: 500,
};

/** Bodies are a reason and a few fields: 16 KiB is plenty, anything larger is refused unread. */
const BODY_LIMIT = 16 * 1024;
const OPENAPI_PATH = '/api/privacy/openapi.json';

/** Builds the HTTP API (not listening): the routes, bearer-token authentication, errors as {"error": …}. */
async function buildHttpApp(opts: Omit<HttpOptions, 'host' | 'port'>): Promise<FastifyInstance> {
  const tls = opts.tls?._isSecure() === true ? opts.tls : undefined;
  const https = tls === undefined ? null : { ...tls._getConstructorOptions(), ...tls._getSecureContextOptions() };
  // Ids are checked by the engine (at most 256 bytes, the same message as over gRPC): the router lets longer ones through to it.
  const app = Fastify({
    https,
    logger: false,
    bodyLimit: BODY_LIMIT,
    routerOptions: { maxParamLength: 2048 },
    trustProxy: false,
    return503OnClosing: true,
    // An unknown field is an error, not something to drop silently; no type coercion of bodies.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  });
  await app.register(swagger, {
    openapi: {
      info: {
        title: 'Lethe privacy API',
        version: opts.version,
        description: 'GDPR access and erasure: the reference privacy API, served by the same engine as the gRPC PrivacyService.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(rateLimit, {
    max: opts.rateLimitPerMinute,
    timeWindow: 60_000,
    errorResponseBuilder: (_req, ctx) => Object.assign(new Error(`Too many requests; retry in ${Math.ceil(ctx.ttl / 1000)}s`), { statusCode: 429 }),
  });
  if (opts.corsOrigins.length > 0)
    await app.register(cors, {
      origin: [...opts.corsOrigins],
      methods: ['GET', 'DELETE', 'POST'],
      allowedHeaders: ['authorization', 'content-type', 'idempotency-key'],
    });

  app.addHook('onRequest', async (request) => {
    // The OpenAPI document and unknown paths (404) need no token.
    if (request.url === OPENAPI_PATH || request.method === 'OPTIONS' || request.routeOptions.url === undefined) return;
    request.principal = await opts.verify(request.headers.authorization);
  });
  app.addHook('onResponse', async (request, reply) => {
    opts.logger.info({ method: request.method, route: request.routeOptions.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'http request');
  });
  app.setErrorHandler((err: FastifyError | LetheError | Error, _request, reply) => {
    if (err instanceof LetheError) return reply.code(HTTP_STATUS[err.code]).send({ error: err.message });
    const fe = err as FastifyError;
    if (fe.validation !== undefined) {
      // Names the field and the rule, never the value.
      const v = fe.validation[0];
      const extra = (v?.params as { additionalProperty?: string } | undefined)?.additionalProperty;
      if (extra !== undefined) return reply.code(400).send({ error: `${fe.validationContext ?? 'request'}.${extra} is not a known field` });
      const field =
        (v?.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.') ||
        (v?.params as { missingProperty?: string } | undefined)?.missingProperty ||
        fe.validationContext ||
        'request';
      return reply.code(400).send({ error: `${field} ${v?.message ?? 'is not valid'}` });
    }
    if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) return reply.code(fe.statusCode).send({ error: clientError(fe) });
    opts.logger.error({ err: errorSummary(err) }, 'internal error in the HTTP API');
    return reply.code(500).send({ error: 'Internal error; see the server log' });
  });
  app.setNotFoundHandler((_request, reply) => reply.code(404).send({ error: 'Not found' }));

  privacyRoutes(app, opts.engine, opts.pageTokens);
  rightsRoutes(app, opts.engine);
  app.get(OPENAPI_PATH, { schema: { hide: true } }, async () => app.swagger());
  return app;
}

/** Starts the HTTP API on host:port (0: a free port). */
export async function startHttpServer(opts: HttpOptions): Promise<HttpServer> {
  const app = await buildHttpApp(opts);
  const tls = opts.tls?._isSecure() === true ? opts.tls : undefined;
  // A rotated certificate reaches new HTTPS connections as it reaches gRPC's (the credentials' watchers).
  const rotate = (context: Parameters<HttpsServer['setSecureContext']>[0] | null) => {
    if (context !== null) (app.server as HttpsServer).setSecureContext(context);
  };
  tls?._addWatcher(rotate);
  app.addHook('onClose', async () => tls?._removeWatcher(rotate));
  await app.listen({ host: opts.host, port: opts.port });
  const address = app.server.address();
  return { port: typeof address === 'object' && address !== null ? address.port : opts.port, close: () => app.close() };
}

/** fastify's own 4xx (a body that is not JSON, too large, a wrong content type) in the reference's shape. */
function clientError(err: FastifyError): string {
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return `Request body is larger than ${BODY_LIMIT} bytes`;
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return 'Request body must be JSON (content-type: application/json)';
  if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError)
    return 'Request body is not valid JSON';
  return err.message.length < 200 ? err.message : 'Bad request';
}
