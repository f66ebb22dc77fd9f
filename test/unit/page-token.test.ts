import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { INVALID_PAGE_TOKEN, PageTokens } from '../../src/api/page-token.js';

const position = { receivedAt: new Date('2026-12-01T10:00:00.123Z'), id: '0f8e4b1a-1d51-4b8f-9a57-2f6a8c1e9d10' };

describe('page tokens', () => {
  const key = randomBytes(32);
  const tokens = new PageTokens(key);

  it('round-trips a position, and another replica with the same key reads it', () => {
    const token = tokens.encode(position);
    expect(tokens.decode(token)).toEqual(position);
    expect(new PageTokens(Buffer.from(key)).decode(token)).toEqual(position);
  });

  const refused = (token: string) => {
    let error: unknown;
    try {
      tokens.decode(token);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toBe(INVALID_PAGE_TOKEN);
  };

  it('refuses a token made with another key', () => refused(new PageTokens(randomBytes(32)).encode(position)));

  it('refuses an altered payload, an altered or truncated MAC, another version and garbage', () => {
    const [version, payload = '', mac = ''] = tokens.encode(position).split('.');
    const forged = Buffer.from(JSON.stringify(['+275760-09-13T00:00:00.000Z', position.id])).toString('base64url');
    for (const token of [
      `${version}.${forged}.${mac}`,
      `${version}.${payload}.${mac.slice(0, -2)}AA`,
      `${version}.${payload}.${mac.slice(0, 10)}`,
      `v2.${payload}.${mac}`,
      `${version}.${payload}`,
      forged,
      '',
      'garbage',
      '...',
    ]) {
      refused(token);
    }
  });

  it('checks the position even under a valid MAC (dates PostgreSQL cannot hold, ids that are not UUIDs)', () => {
    // The server never issues these; a leaked key must still not reach SQL with them.
    const forge = (value: unknown) => {
      const payload = Buffer.from(JSON.stringify(value)).toString('base64url');
      const sign = (tokens as unknown as { mac(p: string): Buffer }).mac.bind(tokens);
      return `v1.${payload}.${sign(payload).toString('base64url')}`;
    };
    expect(tokens.decode(forge([position.receivedAt.toISOString(), position.id]))).toEqual(position);
    for (const value of [
      ['+275760-09-13T00:00:00.000Z', position.id],
      ['-000001-01-01T00:00:00.000Z', position.id],
      ['not a date', position.id],
      [position.receivedAt.toISOString(), 'x'],
      [1, 2],
      {},
      'x',
      null,
    ]) {
      refused(forge(value));
    }
  });
});
