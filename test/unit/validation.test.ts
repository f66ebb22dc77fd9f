import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { checkReason, requireId } from '../../src/privacy/validation.js';

function rejection(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (err) {
    if (err instanceof InvalidArgumentError) return err;
    throw err;
  }
  throw new Error('expected an InvalidArgumentError');
}

describe('requireId', () => {
  it.each([['u-1'], ['3f2504e0-4f89-11d3-9a0c-0305e82c3301'], ['user@example.com'], ['a'.repeat(256)], ['!~']])('accepts %s and returns it', (value) => {
    expect(requireId(value, 'user_id')).toBe(value);
  });

  it.each([
    ['empty', '', 'user_id is required'],
    ['257 bytes', 'a'.repeat(257), 'user_id must be at most 256 bytes'],
    ['257+ bytes of non-ASCII', 'é'.repeat(129), 'user_id must be at most 256 bytes'],
    ['non-ASCII', 'jürgen', 'user_id must be printable ASCII with no spaces'],
    ['a space', 'alice smith', 'user_id must be printable ASCII with no spaces'],
    ['only spaces', '   ', 'user_id must be printable ASCII with no spaces'],
    ['a tab', 'alice\tsmith', 'user_id must be printable ASCII with no spaces'],
    ['a newline', 'alice\nsmith', 'user_id must be printable ASCII with no spaces'],
    ['a NUL', 'alice\u0000', 'user_id must be printable ASCII with no spaces'],
    ['DEL', 'alice\u007f', 'user_id must be printable ASCII with no spaces'],
    ['an emoji', 'alice🙂', 'user_id must be printable ASCII with no spaces'],
  ])('rejects %s', (_label, value, message) => {
    const err = rejection(() => requireId(value, 'user_id'));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toBe(message);
  });

  it('names the field it was given', () => {
    expect(rejection(() => requireId('', 'request_id')).message).toBe('request_id is required');
  });

  it.each(['alice smith@example.com', 'jürgen.müller@example.de', `secret-${'x'.repeat(300)}`])('never puts the value in the message: %s', (value) => {
    const err = rejection(() => requireId(value, 'user_id'));
    expect(err.message).not.toContain(value);
    expect(err.message.startsWith('user_id ')).toBe(true);
  });
});

describe('checkReason', () => {
  it.each([['GDPR Art. 17 request #4711'], ['Löschung auf Wunsch des Nutzers'], ['x'.repeat(256)], ['é'.repeat(128)]])('accepts %s unchanged', (value) => {
    expect(checkReason(value, { required: true })).toBe(value);
  });

  it.each([
    ['empty', ''],
    ['only spaces', '    '],
    ['only a tab and newline', '\t\n'],
  ])('returns the empty string for %s when not required', (_label, value) => {
    expect(checkReason(value, { required: false })).toBe('');
  });

  it.each([
    ['empty', '', 'reason is required'],
    ['whitespace only', '  \t ', 'reason is required'],
    ['257 bytes', 'r'.repeat(257), 'reason must be at most 256 bytes'],
    ['258 bytes of non-ASCII', 'é'.repeat(129), 'reason must be at most 256 bytes'],
    ['a newline', 'user asked\nagain', 'reason must not contain control characters'],
    ['a tab', 'user\tasked', 'reason must not contain control characters'],
    ['a NUL', 'user asked\u0000', 'reason must not contain control characters'],
    ['an escape', 'user \u001b[31masked', 'reason must not contain control characters'],
    ['DEL', 'user asked\u007f', 'reason must not contain control characters'],
  ])('rejects %s', (_label, value, message) => {
    const err = rejection(() => checkReason(value, { required: true }));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toBe(message);
    if (value.trim().length > 0) expect(err.message).not.toContain(value);
  });
});
