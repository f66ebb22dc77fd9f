import { type CryptoKey, CompactEncrypt, type JWK, SignJWT, compactDecrypt, exportJWK, generateKeyPair, importJWK, jwtVerify } from 'jose';
import { z } from 'zod';
import { installBase64 } from '../runtime/base64.js';

/**
 * The downstream export protocol between the server and a service's sidecars, on core NATS (no
 * stream stores any of it):
 *
 * 1. The server sends an export request to `lethe.export.v1.<service>` (one sidecar of the
 *    service's queue group takes it): a JWT signed with the server's Ed25519 export key, naming
 *    the subject, the ledger request, the service (audience), a reply inbox and a one-time X25519
 *    public key. The sidecar answers `accepted` (or `refused`) at once.
 * 2. The sidecar reads its own data map's export in one snapshot and sends it to the inbox as a
 *    sequence of chunks (`header`, `batch`…, then `end` or `error`), each a NATS request whose
 *    reply is the server's go-ahead: the next chunk leaves only once the server has handed the
 *    previous one on, so a slow client slows the sidecar (flow control) and nothing piles up.
 * 3. Every chunk is a JWE (ECDH-ES with the one-time key, A256GCM): only the server that asked
 *    can read it, whoever else subscribes to the inbox and whatever NATS's transport.
 */

// Every chunk is a JWE: jose's base64 in JavaScript would cost more than the encryption.
installBase64();

const EXPORT_ISSUER = 'lethe';
const exportAudience = (service: string): string => `lethe-sidecar/${service}`;
/** A chunk on the wire (JWE compact) may not exceed this (NATS refuses more than 1 MiB by default; sidecars send about 180 KiB). */
const MAX_CHUNK_MESSAGE_BYTES = 768 * 1024;

const KEY_AGREEMENT = { alg: 'ECDH-ES', enc: 'A256GCM' } as const;

export interface ExportRequestClaims {
  readonly subjectId: string;
  readonly requestId: string;
  readonly service: string;
  readonly reply: string;
  readonly encryptionKey: JWK;
}

/** The server's side of one request: its signed token and the key that opens the chunks. */
export interface SealedExportRequest {
  readonly token: string;
  readonly decryptionKey: CryptoKey;
}

export async function sealExportRequest(
  signingKey: CryptoKey,
  r: { subjectId: string; requestId: string; service: string; reply: string },
  ttlSeconds = 120,
): Promise<SealedExportRequest> {
  const { publicKey, privateKey } = await generateKeyPair('ECDH-ES', { crv: 'X25519' });
  const token = await new SignJWT({ reply: r.reply, enc_key: await exportJWK(publicKey) })
    .setProtectedHeader({ alg: 'EdDSA', typ: 'lethe-export+jwt' })
    .setIssuer(EXPORT_ISSUER)
    .setAudience(exportAudience(r.service))
    .setSubject(r.subjectId)
    .setJti(r.requestId)
    .setIssuedAt()
    .setExpirationTime(`${ttlSeconds}s`)
    .sign(signingKey);
  return { token, decryptionKey: privateKey };
}

const requestPayload = z.object({
  sub: z.string().min(1).max(256),
  jti: z.string().min(1).max(256),
  reply: z.string().regex(/^[A-Za-z0-9_.-]{1,255}$/, 'reply must be a plain NATS subject'),
  enc_key: z.object({ kty: z.literal('OKP'), crv: z.literal('X25519'), x: z.string().min(1) }),
});

/** Verifies a request as a sidecar of `service`: signed by the server's key, for this service, not expired. */
export async function openExportRequest(token: string, verifyKey: CryptoKey, service: string): Promise<ExportRequestClaims & { encryptTo: CryptoKey }> {
  const { payload } = await jwtVerify(token, verifyKey, {
    issuer: EXPORT_ISSUER,
    audience: exportAudience(service),
    algorithms: ['EdDSA'],
    typ: 'lethe-export+jwt',
    requiredClaims: ['exp', 'sub', 'jti'],
  });
  const p = requestPayload.parse(payload);
  const encryptTo = (await importJWK(p.enc_key, 'ECDH-ES')) as CryptoKey;
  return { subjectId: p.sub, requestId: p.jti, service, reply: p.reply, encryptionKey: p.enc_key, encryptTo };
}

const category = z.strictObject({
  name: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,62}$/),
  documentKey: z.string().regex(/^([A-Za-z_][A-Za-z0-9_]{0,127})?$/),
  shape: z.enum(['object', 'list']),
  countKey: z
    .string()
    .regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/)
    .optional(),
  totalCount: z.number().int().nonnegative(),
  limit: z.number().int().nonnegative(),
});

const chunkBody = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('header'), categories: z.array(category).max(256) }),
  z.strictObject({ kind: z.literal('batch'), category: z.string().min(1).max(63), records: z.array(z.string()).min(1) }),
  z.strictObject({ kind: z.literal('end'), records: z.number().int().nonnegative() }),
  z.strictObject({ kind: z.literal('error'), reason: z.string().max(200) }),
]);
const chunk = z.intersection(z.object({ requestId: z.string().min(1).max(256), stream: z.string().uuid(), seq: z.number().int().nonnegative() }), chunkBody);
export type ExportChunk = z.infer<typeof chunk>;
export type ExportChunkBody = z.infer<typeof chunkBody>;

export async function sealChunk(c: ExportChunk, encryptTo: CryptoKey): Promise<string> {
  return new CompactEncrypt(new TextEncoder().encode(JSON.stringify(c))).setProtectedHeader(KEY_AGREEMENT).encrypt(encryptTo);
}

/** Opens and checks a chunk; throws a ChunkRejected naming what is wrong (never what it held). */
export async function openChunk(data: Uint8Array, decryptionKey: CryptoKey): Promise<ExportChunk> {
  if (data.length > MAX_CHUNK_MESSAGE_BYTES) throw new ChunkRejected(`a chunk of ${data.length} bytes (at most ${MAX_CHUNK_MESSAGE_BYTES})`);
  let plaintext: Uint8Array;
  try {
    ({ plaintext } = await compactDecrypt(new TextDecoder().decode(data), decryptionKey, {
      keyManagementAlgorithms: ['ECDH-ES'],
      contentEncryptionAlgorithms: ['A256GCM'],
    }));
  } catch {
    throw new ChunkRejected('a chunk that does not decrypt with this export’s key');
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(plaintext));
  } catch {
    throw new ChunkRejected('a chunk that is not JSON');
  }
  const parsed = chunk.safeParse(json);
  if (!parsed.success) throw new ChunkRejected(`a malformed chunk (${parsed.error.issues[0]?.path.join('.') || 'body'})`);
  return parsed.data;
}

/** What the server answers to each chunk. */
export type ChunkReply = { readonly ok: true } | { readonly stop: string };
/** What a sidecar answers to an export request. */
export type RequestReply = { readonly accepted: true } | { readonly refused: string };

const chunkReply = z.union([z.strictObject({ ok: z.literal(true) }), z.strictObject({ stop: z.string().max(200) })]);
const requestReply = z.union([z.strictObject({ accepted: z.literal(true) }), z.strictObject({ refused: z.string().max(200) })]);

export const encodeReply = (r: ChunkReply | RequestReply): Uint8Array => new TextEncoder().encode(JSON.stringify(r));

export function decodeChunkReply(data: Uint8Array): ChunkReply {
  return chunkReply.parse(JSON.parse(new TextDecoder().decode(data)));
}

export function decodeRequestReply(data: Uint8Array): RequestReply {
  return requestReply.parse(JSON.parse(new TextDecoder().decode(data)));
}

/** A chunk the server will not take; the message is safe to log and to show (no data in it). */
export class ChunkRejected extends Error {
  override readonly name = 'ChunkRejected';
}
