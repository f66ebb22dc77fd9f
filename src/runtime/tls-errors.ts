/**
 * A failed TLS connection to a dependency (PostgreSQL, NATS), said in words an operator can act
 * on. Only Node's error code is used, never the error's message or the peer's certificate.
 */

const UNTRUSTED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
]);

/** Undefined when `err` is not a TLS failure. */
export function describeTlsFailure(err: unknown): string | undefined {
  const found = findTlsError(err, 0);
  if (found === undefined) return undefined;
  const { code } = found;
  if (code === 'NO_TLS') return 'the server does not offer TLS (turn it on there, or drop sslmode)';
  if (UNTRUSTED.has(code)) return `the server's certificate is not trusted: it is not signed by the CA you gave (${code})`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return `the server's certificate does not name the host you connect to (${code}): connect by a name (or IP) in its subjectAltName`;
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') return `the server's certificate is not valid now (${code})`;
  return `the TLS handshake failed (${code})`;
}

function findTlsError(err: unknown, depth: number): { code: string } | undefined {
  if (typeof err !== 'object' || err === null || depth > 3) return undefined;
  const e = err as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
  if (typeof e.code === 'string' && (UNTRUSTED.has(e.code) || e.code.startsWith('ERR_TLS_') || e.code.startsWith('ERR_SSL_') || e.code.startsWith('CERT_')))
    return { code: e.code };
  // node-postgres' own words when the server answers "no" to SSLRequest.
  if (typeof e.message === 'string' && e.message === 'The server does not support SSL connections') return { code: 'NO_TLS' };
  for (const inner of [e.cause, ...(Array.isArray(e.errors) ? (e.errors as unknown[]) : [])]) {
    const found = findTlsError(inner, depth + 1);
    if (found !== undefined) return found;
  }
  return undefined;
}
