/**
 * `Uint8Array.prototype.toBase64` and `Uint8Array.fromBase64` (ES2026) where the runtime lacks
 * them, as Node 20 and 24 do, backed by Buffer's native codec. jose uses them when they exist and
 * otherwise encodes in JavaScript (String.fromCharCode, btoa, three regular expressions), which
 * was a quarter of a sidecar's CPU time in a downstream export: every export chunk is a JWE of
 * about 180 KiB of base64url. Installed once, only where missing; `lastChunkHandling` other than
 * the default (`loose`) is not supported and throws (see fromBase64 for how it is stricter).
 */

type Alphabet = 'base64' | 'base64url';

interface ToBase64Options {
  alphabet?: Alphabet;
  omitPadding?: boolean;
}

interface FromBase64Options {
  alphabet?: Alphabet;
  lastChunkHandling?: 'loose' | 'strict' | 'stop-before-partial';
}

function alphabetOf(options: { alphabet?: unknown } | undefined): Alphabet {
  const alphabet = options?.alphabet ?? 'base64';
  if (alphabet !== 'base64' && alphabet !== 'base64url') throw new TypeError('alphabet must be "base64" or "base64url"');
  return alphabet;
}

const EQUALS = 0x3d;

/** `text` without its trailing `=` (a loop: a regular expression would scan the whole text). */
function unpadded(text: string): string {
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === EQUALS) end--;
  return end === text.length ? text : text.slice(0, end);
}

const padded = (text: string): string => text + '='.repeat((4 - (text.length % 4)) % 4);

function toBase64(this: Uint8Array, options?: ToBase64Options): string {
  const alphabet = alphabetOf(options);
  // Buffer's base64url comes without padding, its base64 with.
  const text = Buffer.from(this.buffer, this.byteOffset, this.byteLength).toString(alphabet);
  if (options?.omitPadding === true) return alphabet === 'base64' ? unpadded(text) : text;
  return alphabet === 'base64url' ? padded(text) : text;
}

/**
 * Buffer skips what is not base64 and accepts both alphabets; the decoded bytes, encoded again,
 * give back the text only if it was canonical base64 of the alphabet. Stricter than the
 * standard's `loose` mode: whitespace and non-zero bits after the last byte are refused too.
 */
function fromBase64(text: unknown, options?: FromBase64Options): Uint8Array {
  if (typeof text !== 'string') throw new TypeError('fromBase64 takes a string');
  const alphabet = alphabetOf(options);
  if ((options?.lastChunkHandling ?? 'loose') !== 'loose') throw new TypeError('only lastChunkHandling "loose" is supported');
  const bare = unpadded(text);
  const padding = text.length - bare.length;
  const bytes = Buffer.from(bare, alphabet);
  const again = bytes.toString(alphabet);
  if (padding > 2 || (padding > 0 && text.length % 4 !== 0) || again !== (alphabet === 'base64' ? padded(bare) : bare)) {
    throw new SyntaxError(`not ${alphabet}`);
  }
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function installBase64(): void {
  if (typeof (Uint8Array.prototype as { toBase64?: unknown }).toBase64 !== 'function') {
    Object.defineProperty(Uint8Array.prototype, 'toBase64', { value: toBase64, writable: true, configurable: true });
  }
  if (typeof (Uint8Array as { fromBase64?: unknown }).fromBase64 !== 'function') {
    Object.defineProperty(Uint8Array, 'fromBase64', { value: fromBase64, writable: true, configurable: true });
  }
}
