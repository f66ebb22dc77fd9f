import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { UUID } from '../privacy/engine.js';

/** Where a page of the ledger ends: the last request's receipt time and id (keyset pagination). */
export interface PagePosition {
  readonly receivedAt: Date;
  readonly id: string;
}

export const INVALID_PAGE_TOKEN = 'page_token is not valid';

const VERSION = 'v1';
const MAC_BYTES = 16;
// PostgreSQL's timestamptz range ends in 294276 AD; JavaScript dates reach 275760. Tokens this
// server issues hold real receipt times, far inside both.
const EARLIEST = Date.UTC(1970, 0, 1);
const LATEST = Date.UTC(9999, 11, 31);

/**
 * Page tokens are opaque to clients and authenticated: `v1.<payload>.<mac>`, the payload the
 * position as base64url JSON, the MAC an HMAC-SHA256 (truncated to 128 bits) under a key every
 * replica derives from the shared artifact key, so a token from one replica works on another.
 * A token not made by a server with that key — altered, forged, or from before a key change — is
 * INVALID_ARGUMENT, and its position is still checked before it reaches SQL.
 */
export class PageTokens {
  private readonly key: Buffer;

  constructor(secret: Buffer) {
    this.key = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'lethe page token v1', 32));
  }

  encode(position: PagePosition): string {
    const payload = Buffer.from(JSON.stringify([position.receivedAt.toISOString(), position.id])).toString('base64url');
    return `${VERSION}.${payload}.${this.mac(payload).toString('base64url')}`;
  }

  /** The position a token names; InvalidArgumentError for anything this server did not issue. */
  decode(token: string): PagePosition {
    const position = this.verify(token);
    if (position === undefined) throw new InvalidArgumentError(INVALID_PAGE_TOKEN);
    return position;
  }

  private verify(token: string): PagePosition | undefined {
    const parts = token.split('.');
    if (parts.length !== 3 || parts[0] !== VERSION) return undefined;
    const [, payload = '', mac = ''] = parts;
    const given = Buffer.from(mac, 'base64url');
    if (given.length !== MAC_BYTES || !timingSafeEqual(given, this.mac(payload))) return undefined;
    let decoded: unknown;
    try {
      decoded = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    } catch {
      return undefined;
    }
    if (!Array.isArray(decoded) || decoded.length !== 2) return undefined;
    const [at, id] = decoded as unknown[];
    if (typeof at !== 'string' || typeof id !== 'string' || !UUID.test(id)) return undefined;
    const receivedAt = new Date(at);
    const ms = receivedAt.getTime();
    if (Number.isNaN(ms) || ms < EARLIEST || ms > LATEST) return undefined;
    return { receivedAt, id };
  }

  private mac(payload: string): Buffer {
    return createHmac('sha256', this.key).update(`${VERSION}.${payload}`).digest().subarray(0, MAC_BYTES);
  }
}
