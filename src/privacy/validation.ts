import { InvalidArgumentError } from '../errors.js';

/**
 * Request fields are checked before anything touches the database. Error messages name the
 * field and the rule, never the value (it may be personal data).
 */

const MAX_BYTES = 256;
const PRINTABLE_ASCII = /^[\x21-\x7e]+$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

export function requireId(value: string, field: string): string {
  if (value.length === 0) throw new InvalidArgumentError(`${field} is required`);
  if (Buffer.byteLength(value, 'utf8') > MAX_BYTES) throw new InvalidArgumentError(`${field} must be at most ${MAX_BYTES} bytes`);
  if (!PRINTABLE_ASCII.test(value)) throw new InvalidArgumentError(`${field} must be printable ASCII with no spaces`);
  return value;
}

/** An optional id: empty means absent. */
export function optionalId(value: string, field: string): string | undefined {
  return value.length === 0 ? undefined : requireId(value, field);
}

export function checkReason(value: string, options: { required: boolean }): string {
  if (value.trim().length === 0) {
    if (options.required) throw new InvalidArgumentError('reason is required');
    return '';
  }
  if (Buffer.byteLength(value, 'utf8') > MAX_BYTES) throw new InvalidArgumentError(`reason must be at most ${MAX_BYTES} bytes`);
  if (CONTROL.test(value)) throw new InvalidArgumentError('reason must not contain control characters');
  return value;
}
