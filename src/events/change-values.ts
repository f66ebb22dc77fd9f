import { CompactEncrypt, type CryptoKey, SignJWT, compactDecrypt, exportJWK, generateKeyPair, importJWK, jwtVerify } from 'jose';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { z } from 'zod';
import { errorSummary } from '../errors.js';
import type { Runnable } from '../runtime/lifecycle.js';
import { SERVICE_NAME } from './subjects.js';

/**
 * How a sidecar gets a rectification's new values, which no event carries (events hold the subject
 * id only, and a stream keeps them for weeks). On core NATS, never stored:
 *
 * 1. The sidecar asks `lethe.change.v1.values` (the server replicas' queue group) for the request's
 *    values, naming its service and a one-time X25519 public key.
 * 2. A server answers only while the service still has to apply them, with a JWE (ECDH-ES to that
 *    key, A256GCM) around a JWT signed by the server's export key (the sidecar checks it with the
 *    key it already trusts for exports), naming the subject, the request and the service.
 *
 * So only the sidecar that asked can read the values, and only values the server signed are
 * applied. Who may ask at all is NATS's to restrict (README, "NATS permissions").
 */

const CHANGE_VALUES_SUBJECT = 'lethe.change.v1.values';
const QUEUE_GROUP = 'lethe-change-values';
const ISSUER = 'lethe';
const TYPE = 'lethe-change+jwt';
const audience = (service: string): string => `lethe-sidecar/${service}`;
const KEY_AGREEMENT = { alg: 'ECDH-ES', enc: 'A256GCM' } as const;

const valuesRequest = z.strictObject({
  request_id: z.uuid(),
  service: z.string().regex(SERVICE_NAME),
  enc_key: z.object({ kty: z.literal('OKP'), crv: z.literal('X25519'), x: z.string().min(1) }),
});

const valuesReply = z.union([z.strictObject({ sealed: z.string().min(1) }), z.strictObject({ gone: z.string().max(200) })]);
const sealedClaims = z.object({ sub: z.string().min(1).max(256), jti: z.uuid(), values: z.record(z.string(), z.string()) });

/** What the server knows about a rectification's values for one service (the engine's pendingValues). */
export type ValuesLookup = (
  requestId: string,
  service: string,
) => Promise<{ kind: 'values'; subjectId: string; values: ReadonlyArray<[string, string]> } | { kind: 'gone'; reason: string }>;

/** The sidecar's answer: the values to apply, or why there are none (settled, erased, unknown). */
export type FetchedValues = { readonly kind: 'values'; readonly values: ReadonlyArray<[string, string]> } | { readonly kind: 'gone'; readonly reason: string };

/** Asks the server for a rectification's values; throws when no server answers in time (retry later). */
export async function fetchChangeValues(
  nc: NatsConnection,
  r: { requestId: string; subjectId: string; service: string; verifyKey: CryptoKey; timeoutMs: number },
): Promise<FetchedValues> {
  const { publicKey, privateKey } = await generateKeyPair('ECDH-ES', { crv: 'X25519' });
  const body = { request_id: r.requestId, service: r.service, enc_key: await exportJWK(publicKey) };
  const msg = await nc.request(CHANGE_VALUES_SUBJECT, JSON.stringify(body), { timeout: r.timeoutMs });
  const reply = valuesReply.parse(JSON.parse(new TextDecoder().decode(msg.data)));
  if ('gone' in reply) return { kind: 'gone', reason: reply.gone };
  const { plaintext } = await compactDecrypt(reply.sealed, privateKey, { keyManagementAlgorithms: ['ECDH-ES'], contentEncryptionAlgorithms: ['A256GCM'] });
  const { payload } = await jwtVerify(new TextDecoder().decode(plaintext), r.verifyKey, {
    issuer: ISSUER,
    audience: audience(r.service),
    algorithms: ['EdDSA'],
    typ: TYPE,
    requiredClaims: ['exp', 'sub', 'jti'],
  });
  const claims = sealedClaims.parse(payload);
  if (claims.jti !== r.requestId || claims.sub !== r.subjectId) throw new Error('the server signed values for another request or subject');
  return { kind: 'values', values: Object.entries(claims.values) };
}

/** The server's side: answers values requests from the sidecars, one queue group across replicas. */
export class ChangeValuesResponder implements Runnable {
  private sub: Subscription | undefined;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly lookup: ValuesLookup,
    private readonly signingKey: CryptoKey,
    private readonly logger: Logger,
  ) {}

  start(): void {
    const sub = this.nc.subscribe(CHANGE_VALUES_SUBJECT, { queue: QUEUE_GROUP });
    this.sub = sub;
    this.loop = (async () => {
      for await (const m of sub) {
        const reply = await this.answer(m.data).catch((err: unknown) => {
          this.logger.warn({ err: errorSummary(err) }, 'cannot answer a change values request');
          return { gone: 'the server could not read the values; try again' };
        });
        if (m.reply !== undefined) m.respond(JSON.stringify(reply));
      }
    })();
  }

  async stop(): Promise<void> {
    this.sub?.unsubscribe();
    await this.loop;
  }

  private async answer(data: Uint8Array): Promise<z.infer<typeof valuesReply>> {
    let req: z.infer<typeof valuesRequest>;
    try {
      req = valuesRequest.parse(JSON.parse(new TextDecoder().decode(data)));
    } catch {
      return { gone: 'not a valid values request' };
    }
    const found = await this.lookup(req.request_id, req.service);
    if (found.kind === 'gone') return { gone: found.reason };
    const token = await new SignJWT({ values: Object.fromEntries(found.values) })
      .setProtectedHeader({ alg: 'EdDSA', typ: TYPE })
      .setIssuer(ISSUER)
      .setAudience(audience(req.service))
      .setSubject(found.subjectId)
      .setJti(req.request_id)
      .setIssuedAt()
      .setExpirationTime('2m')
      .sign(this.signingKey);
    const encryptTo = (await importJWK(req.enc_key, 'ECDH-ES')) as CryptoKey;
    const sealed = await new CompactEncrypt(new TextEncoder().encode(token)).setProtectedHeader(KEY_AGREEMENT).encrypt(encryptTo);
    this.logger.info({ requestId: req.request_id, service: req.service }, 'rectification values sent');
    return { sealed };
  }
}
