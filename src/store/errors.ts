import { LetheError, UnavailableError } from '../errors.js';

const TIMEOUT_CODES = new Set(['53300', '57014', '55P03', '25P03']);
const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN']);

/**
 * SQLSTATE classes 08 (connection exception) and 57P (operator intervention), 53300 (too many
 * connections), 57014 (statement_timeout), 55P03 (lock_timeout) and 25P03 (idle in transaction
 * too long); pg's own timeouts (query_timeout, connectionTimeoutMillis).
 */
function isUnavailable(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { code?: unknown; name?: unknown; message?: unknown; errors?: unknown };
  if (typeof e.code === 'string') {
    if (CONNECTION_CODES.has(e.code) || e.code.startsWith('08') || e.code.startsWith('57P') || TIMEOUT_CODES.has(e.code)) return true;
  }
  if (e.name === 'KnexTimeoutError') return true;
  if (
    typeof e.message === 'string' &&
    /Connection terminated|connection is closed|Client has encountered a connection error|Query read timeout|timeout exceeded when trying to connect/i.test(
      e.message,
    )
  )
    return true;
  // AggregateError from a dual-stack connect attempt.
  if (Array.isArray(e.errors)) return e.errors.some(isUnavailable);
  return false;
}

export const DATABASE_UNAVAILABLE = 'The database is unavailable; retry later';

/** Turns a lost or refused database connection into UNAVAILABLE; other errors pass through. */
export function translateDatabaseError(err: unknown): unknown {
  if (err instanceof LetheError) return err;
  if (isUnavailable(err)) return new UnavailableError(DATABASE_UNAVAILABLE, { cause: err });
  return err;
}
