import { randomUUID } from 'node:crypto';
import { isAbortError } from 'abort-controller-x';
import { type CallContext, type ServerMiddlewareCall, ServerError, Status } from 'nice-grpc';
import type { Logger } from 'pino';
import type { Verifier } from '../auth/verifier.js';
import { LetheError, errorSummary } from '../errors.js';
import type { ExportUserResponse, StoreExportResponse } from '../gen/lethe/privacy/v1/privacy.js';
import type { ServerMetrics } from '../metrics/server-metrics.js';
import type { Principal } from '../privacy/principal.js';

/** The call context that PrivacyService handlers see once the caller is authenticated. */
export interface AuthContext {
  readonly principal: Principal;
}

const STATUS_OF: Record<LetheError['code'], Status> = {
  INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
  UNAUTHENTICATED: Status.UNAUTHENTICATED,
  PERMISSION_DENIED: Status.PERMISSION_DENIED,
  NOT_FOUND: Status.NOT_FOUND,
  FAILED_PRECONDITION: Status.FAILED_PRECONDITION,
  UNAVAILABLE: Status.UNAVAILABLE,
  CANCELLED: Status.CANCELLED,
  RESOURCE_EXHAUSTED: Status.RESOURCE_EXHAUSTED,
  ABORTED: Status.ABORTED,
  DATA_LOSS: Status.DATA_LOSS,
};

/**
 * Maps domain errors to status codes, once for every service, and logs (and, given metrics,
 * counts) each call's outcome by method and code. An error that is not a domain error is a bug:
 * it is logged by type (not message, which may quote data) and answered INTERNAL with an id to
 * find the log line.
 */
export function errorsAndLogging(logger: Logger, metrics?: ServerMetrics) {
  return async function* <Req, Res>(call: ServerMiddlewareCall<Req, Res>, context: CallContext) {
    const started = performance.now();
    let code: Status = Status.OK;
    let finished = false;
    try {
      const result = yield* call.next(call.request, context);
      finished = true;
      return result;
    } catch (err) {
      if (err instanceof ServerError) {
        code = err.code;
        throw err;
      }
      if (err instanceof LetheError) {
        code = STATUS_OF[err.code];
        throw new ServerError(code, err.message);
      }
      if (isAbortError(err)) {
        code = Status.CANCELLED;
        throw err;
      }
      code = Status.INTERNAL;
      const incident = randomUUID();
      logger.error({ incident, method: call.method.path, err: errorSummary(err), stack: stackWithoutMessage(err) }, 'internal error');
      throw new ServerError(Status.INTERNAL, `Internal error (incident ${incident}); see the server log`);
    } finally {
      // A stream the caller abandoned is closed by nice-grpc with return(): no error, not done.
      if (code === Status.OK && (!finished || context.signal.aborted)) code = Status.CANCELLED;
      const ms = performance.now() - started;
      logger.info({ method: call.method.path, code: Status[code], ms: Math.round(ms) }, 'call');
      metrics?.observeCall(call.method.path, Status[code], ms / 1_000);
    }
  };
}

function stackWithoutMessage(err: unknown): string | undefined {
  if (!(err instanceof Error) || err.stack === undefined) return undefined;
  return err.stack
    .split('\n')
    .filter((l) => l.trimStart().startsWith('at '))
    .join('\n');
}

const EXPORT_USER = '/lethe.privacy.v1.PrivacyService/ExportUser';
const STORE_EXPORT = '/lethe.privacy.v1.PrivacyService/StoreExport';

/**
 * Counts the records exported, from the totals the server already sends: an ExportUser
 * stream's trailer, a StoreExport's artifact description (not when replayed: nothing ran).
 */
export function exportRecordCounting(metrics: ServerMetrics) {
  return async function* <Req, Res>(call: ServerMiddlewareCall<Req, Res>, context: CallContext) {
    const path = call.method.path;
    if (path === EXPORT_USER) {
      for await (const res of call.next(call.request, context)) {
        const part = (res as ExportUserResponse).part;
        if (part?.$case === 'trailer') metrics.exported(part.value.totalRecords);
        yield res;
      }
      return;
    }
    const res = yield* call.next(call.request, context);
    if (path === STORE_EXPORT && res !== undefined) {
      const stored = res as StoreExportResponse;
      if (!stored.replayed) metrics.exported(stored.artifact?.totalRecords ?? 0);
    }
    return res;
  };
}

/** Verifies the bearer token and adds the caller to the context. */
export function authentication(verify: Verifier) {
  return async function* <Req, Res>(call: ServerMiddlewareCall<Req, Res, AuthContext>, context: CallContext) {
    const principal = await verify(context.metadata.get('authorization'));
    return yield* call.next(call.request, { ...context, principal });
  };
}
