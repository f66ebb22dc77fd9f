import { createHash, createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hmacPads, renderTemplate, TEMPLATE_PLACEHOLDERS } from '../../src/privacy/forget.js';

const sha256 = (...parts: Buffer[]): Buffer => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

describe('renderTemplate', () => {
  const ctx = { timestamp: 1718445600000, requestId: 'req-7f3a' };

  it.each([
    ['anonymized-{timestamp}@deleted.local', 'anonymized-1718445600000@deleted.local'],
    ['gone-{request_id}', 'gone-req-7f3a'],
    ['{request_id}/{timestamp}/{request_id}', 'req-7f3a/1718445600000/req-7f3a'],
    ['fixed text', 'fixed text'],
    ['{email} and {Timestamp}', '{email} and {Timestamp}'],
    ['{timestamp', '{timestamp'],
  ])('%s → %s', (template, rendered) => {
    expect(renderTemplate(template, ctx)).toBe(rendered);
  });

  it('does not expand placeholders that appear in the values', () => {
    expect(renderTemplate('{request_id}-{timestamp}', { timestamp: 1, requestId: '{timestamp}' })).toBe('{timestamp}-1');
  });

  it('knows the placeholders the data map allows', () => {
    expect(TEMPLATE_PLACEHOLDERS).toEqual(['timestamp', 'request_id']);
  });
});

describe('hmacPads', () => {
  /** HMAC computed the way the SQL does: H((K ^ opad) || H((K ^ ipad) || m)). */
  function hmacWithPads(key: Buffer, message: Buffer): string {
    const { inner, outer } = hmacPads(key);
    return sha256(outer, sha256(inner, message)).toString('hex');
  }

  it.each([
    ['a 32-byte key', 32],
    ['a 64-byte key (one block)', 64],
    ['a 65-byte key', 65],
    ['a 100-byte key (hashed first)', 100],
    ['a 1-byte key', 1],
  ])('equals createHmac for %s', (_label, length) => {
    const key = randomBytes(length);
    for (const m of ['', 'alice@example.com', 'x'.repeat(1000), '10.0.0.1']) {
      const message = Buffer.from(m, 'utf8');
      expect(hmacWithPads(key, message)).toBe(createHmac('sha256', key).update(message).digest('hex'));
    }
  });

  it('matches RFC 4231 test case 2', () => {
    const key = Buffer.from('Jefe');
    expect(hmacWithPads(key, Buffer.from('what do ya want for nothing?'))).toBe('5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843');
  });

  it('pads a short key with zeros to one 64-byte block', () => {
    const key = Buffer.alloc(32, 0xff);
    const { inner, outer } = hmacPads(key);
    expect(inner.length).toBe(64);
    expect(outer.length).toBe(64);
    expect(inner.subarray(0, 32).every((b) => b === (0xff ^ 0x36))).toBe(true);
    expect(inner.subarray(32).every((b) => b === 0x36)).toBe(true);
    expect(outer.subarray(0, 32).every((b) => b === (0xff ^ 0x5c))).toBe(true);
    expect(outer.subarray(32).every((b) => b === 0x5c)).toBe(true);
  });

  it('hashes a key longer than the block before padding', () => {
    const key = randomBytes(100);
    const digest = sha256(key);
    const { inner } = hmacPads(key);
    expect(inner.subarray(0, 32)).toEqual(Buffer.from(digest.map((b) => b ^ 0x36)));
    expect(inner.subarray(32).every((b) => b === 0x36)).toBe(true);
  });
});
