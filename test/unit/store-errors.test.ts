import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError, PermissionDeniedError, UnavailableError } from '../../src/errors.js';
import { DATABASE_UNAVAILABLE, translateDatabaseError } from '../../src/store/errors.js';

const withCode = (code: string, message = `error ${code}`): Error => Object.assign(new Error(message), { code });

describe('translateDatabaseError: unavailable database', () => {
  it('uses the documented message', () => {
    expect(DATABASE_UNAVAILABLE).toBe('The database is unavailable; retry later');
  });

  const knexTimeout = Object.assign(new Error('Knex: Timeout acquiring a connection. The pool is probably full.'), { name: 'KnexTimeoutError' });
  const dualStack = new AggregateError(
    [withCode('ECONNREFUSED', 'connect ECONNREFUSED ::1:5432'), withCode('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432')],
    '',
  );

  it.each<[string, unknown]>([
    ['ECONNREFUSED', withCode('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432')],
    ['ECONNRESET', withCode('ECONNRESET')],
    ['ENOTFOUND', withCode('ENOTFOUND', 'getaddrinfo ENOTFOUND db')],
    ['SQLSTATE 08006 (connection failure)', withCode('08006')],
    ['SQLSTATE 08001', withCode('08001')],
    ['SQLSTATE 57P01 (admin shutdown)', withCode('57P01', 'terminating connection due to administrator command')],
    ['SQLSTATE 57P03 (cannot connect now)', withCode('57P03')],
    ['SQLSTATE 53300 (too many connections)', withCode('53300')],
    ['a KnexTimeoutError', knexTimeout],
    ['an AggregateError of ECONNREFUSED', dualStack],
    ['a terminated connection', new Error('Connection terminated unexpectedly')],
    ['SQLSTATE 57014 (statement_timeout)', withCode('57014', 'canceling statement due to statement timeout')],
    ['SQLSTATE 55P03 (lock_timeout)', withCode('55P03', 'canceling statement due to lock timeout')],
    ['SQLSTATE 25P03 (idle in transaction too long)', withCode('25P03', 'terminating connection due to idle-in-transaction timeout')],
    ["pg's query_timeout", new Error('Query read timeout')],
    ["pg's connection timeout", new Error('timeout exceeded when trying to connect')],
  ])('%s becomes UNAVAILABLE', (_label, err) => {
    const translated = translateDatabaseError(err);
    expect(translated).toBeInstanceOf(UnavailableError);
    expect((translated as UnavailableError).code).toBe('UNAVAILABLE');
    expect((translated as UnavailableError).message).toBe('The database is unavailable; retry later');
    expect((translated as UnavailableError).cause).toBe(err);
  });
});

describe('translateDatabaseError: everything else passes through unchanged', () => {
  it.each<[string, unknown]>([
    ['a syntax error (42601)', withCode('42601', 'syntax error at or near "SELEC"')],
    ['a unique violation (23505)', withCode('23505', 'duplicate key value violates unique constraint')],
    ['an AggregateError of syntax errors', new AggregateError([withCode('42601')], '')],
    ['a plain Error', new Error('boom')],
    ['a string', 'boom'],
    ['undefined', undefined],
    ['null', null],
  ])('%s', (_label, err) => {
    expect(translateDatabaseError(err)).toBe(err);
  });

  it.each([
    new UnavailableError('The database is unavailable; retry later'),
    new NotFoundError('User not found'),
    new PermissionDeniedError('Platform owners cannot be anonymized'),
    new InvalidArgumentError('user_id is required'),
  ])('a LetheError passes through as is: %s', (err) => {
    expect(translateDatabaseError(err)).toBe(err);
  });

  it('does not rewrap a LetheError whose cause was a connection error', () => {
    const err = new NotFoundError('User not found', { cause: withCode('ECONNREFUSED') });
    expect(translateDatabaseError(err)).toBe(err);
  });
});
