import { randomBytes } from 'node:crypto';
import { CompactEncrypt, compactDecrypt, generateKeyPair } from 'jose';
import { describe, expect, it } from 'vitest';
import { installBase64 } from '../../src/runtime/base64.js';

interface Base64Uint8Array extends Uint8Array {
  toBase64(options?: { alphabet?: string; omitPadding?: boolean }): string;
}
interface Base64Uint8ArrayConstructor {
  fromBase64(text: string, options?: { alphabet?: string; lastChunkHandling?: string }): Uint8Array;
}

installBase64();
const bytes = (b: Uint8Array | string) => (typeof b === 'string' ? new TextEncoder().encode(b) : b) as Base64Uint8Array;
const fromBase64 = (text: string, options?: { alphabet?: string; lastChunkHandling?: string }) =>
  (Uint8Array as unknown as Base64Uint8ArrayConstructor).fromBase64(text, options);

describe('Uint8Array base64 (ES2026) where the runtime lacks it', () => {
  it('encodes the RFC 4648 vectors, with and without padding, in both alphabets', () => {
    const vectors: Array<[string, string]> = [
      ['', ''],
      ['f', 'Zg=='],
      ['fo', 'Zm8='],
      ['foo', 'Zm9v'],
      ['foob', 'Zm9vYg=='],
      ['fooba', 'Zm9vYmE='],
      ['foobar', 'Zm9vYmFy'],
    ];
    for (const [plain, encoded] of vectors) {
      expect(bytes(plain).toBase64()).toBe(encoded);
      expect(bytes(plain).toBase64({ alphabet: 'base64url' })).toBe(encoded);
      expect(bytes(plain).toBase64({ omitPadding: true })).toBe(encoded.replace(/=+$/, ''));
      expect(new TextDecoder().decode(fromBase64(encoded))).toBe(plain);
      expect(new TextDecoder().decode(fromBase64(encoded.replace(/=+$/, ''), { alphabet: 'base64url' }))).toBe(plain);
    }
    const edge = bytes(new Uint8Array([0xfb, 0xff]));
    expect(edge.toBase64()).toBe('+/8=');
    expect(edge.toBase64({ alphabet: 'base64url', omitPadding: true })).toBe('-_8');
  });

  it('round-trips any bytes, including a view into a larger buffer', () => {
    for (let n = 0; n < 70; n++) {
      const whole = randomBytes(n + 8);
      const view = bytes(new Uint8Array(whole.buffer, whole.byteOffset + 3, n));
      for (const alphabet of ['base64', 'base64url']) {
        for (const omitPadding of [false, true]) {
          const text = view.toBase64({ alphabet, omitPadding });
          expect(Buffer.from(fromBase64(text, { alphabet }))).toEqual(Buffer.from(view));
        }
      }
    }
  });

  it('refuses what is not canonical base64 of the alphabet (stricter than the standard: whitespace, stray bits)', () => {
    expect(() => fromBase64('Zm9v!')).toThrow(SyntaxError);
    expect(() => fromBase64('-_8', { alphabet: 'base64' })).toThrow(SyntaxError);
    expect(() => fromBase64('+/8', { alphabet: 'base64url' })).toThrow(SyntaxError);
    expect(() => fromBase64('Zm9vY')).toThrow(SyntaxError);
    expect(() => fromBase64('Zg=')).toThrow(SyntaxError);
    expect(() => fromBase64('Zg==', { alphabet: 'base32' })).toThrow(TypeError);
    expect(() => fromBase64('Zg==', { lastChunkHandling: 'strict' })).toThrow(TypeError);
    expect(() => fromBase64(' Zm9v\nYmFy\t')).toThrow(SyntaxError);
    expect(() => fromBase64('Zh==')).toThrow(SyntaxError);
  });

  it('is what jose uses: an export chunk’s JWE round-trips, and a tampered one fails', async () => {
    expect((Uint8Array.prototype as { toBase64?: unknown }).toBase64).toBeTypeOf('function');
    const { publicKey, privateKey } = await generateKeyPair('ECDH-ES', { crv: 'X25519' });
    const plaintext = randomBytes(200_000);
    const jwe = await new CompactEncrypt(plaintext).setProtectedHeader({ alg: 'ECDH-ES', enc: 'A256GCM' }).encrypt(publicKey);
    expect(Buffer.from((await compactDecrypt(jwe, privateKey)).plaintext)).toEqual(plaintext);
    const parts = jwe.split('.');
    const ciphertext = parts[3] ?? '';
    parts[3] = (ciphertext[0] === 'A' ? 'B' : 'A') + ciphertext.slice(1);
    await expect(compactDecrypt(parts.join('.'), privateKey)).rejects.toThrow();
  });
});
