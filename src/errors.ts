/**
 * Domain errors. The engine throws these; each front end maps them once (the gRPC error
 * middleware to status codes, the CLI to one line and an exit code). Messages never carry
 * personal data other than a subject id.
 */

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'NOT_FOUND'
  | 'FAILED_PRECONDITION'
  | 'UNAVAILABLE'
  | 'CANCELLED'
  | 'RESOURCE_EXHAUSTED'
  | 'ABORTED'
  | 'DATA_LOSS';

export abstract class LetheError extends Error {
  abstract readonly code: ErrorCode;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class InvalidArgumentError extends LetheError {
  readonly code = 'INVALID_ARGUMENT';
}

/** Stored data can no longer be read as it was written (e.g. an export artifact that does not authenticate). */
export class DataLossError extends LetheError {
  readonly code = 'DATA_LOSS';
}

export class UnauthenticatedError extends LetheError {
  readonly code = 'UNAUTHENTICATED';
}

export class PermissionDeniedError extends LetheError {
  readonly code = 'PERMISSION_DENIED';
}

export class NotFoundError extends LetheError {
  readonly code = 'NOT_FOUND';
}

export class FailedPreconditionError extends LetheError {
  readonly code = 'FAILED_PRECONDITION';
}

/** The database (or another dependency) cannot be reached; the caller may retry. */
export class UnavailableError extends LetheError {
  readonly code = 'UNAVAILABLE';
}

export class CancelledError extends LetheError {
  readonly code = 'CANCELLED';
}

/** The call was stopped by the server (an export whose caller stopped reading); it may be run again. */
export class AbortedError extends LetheError {
  readonly code = 'ABORTED';
}

/** A bounded resource (export slots) is taken; the message says when to retry. */
export class ResourceExhaustedError extends LetheError {
  readonly code = 'RESOURCE_EXHAUSTED';
}

/** A configuration or data map problem found at start-up. `source` names the file or variable. */
export class ConfigError extends Error {
  constructor(
    message: string,
    readonly source: string,
    options?: { cause?: unknown },
  ) {
    super(`${source}: ${message}`, options);
    this.name = 'ConfigError';
  }
}

export const USER_NOT_FOUND = 'User not found';

/** An error's class and code, never its message (which may quote data): safe to log. */
export function errorSummary(err: unknown): { type: string; code?: string } {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' ? { type: err.name, code } : { type: err.name };
  }
  return { type: typeof err };
}
