import { randomUUID } from 'node:crypto';
import type { NatsConnection } from '@nats-io/nats-core';
import { type CryptoKey, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChangeValuesResponder, type ValuesLookup, fetchChangeValues } from '../../src/events/change-values.js';
import { silentLogger } from '../support/engine-fixture.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { natsClient } from '../support/streams.js';

/**
 * The rectification values exchange on a real nats-server: only values the server signed, for
 * this request, subject and service, are taken; nothing in clear crosses NATS.
 */

const natsBin = requireNatsServer();
const SUBJECT = 'user-id-123';

describe.runIf(natsBin !== undefined)('rectification values between the server and a sidecar', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let responder: ChangeValuesResponder | undefined;
  const seen: string[] = [];
  const keys = async () => generateKeyPair('EdDSA', { crv: 'Ed25519' });

  const serve = (lookup: ValuesLookup, signingKey: CryptoKey) => {
    responder = new ChangeValuesResponder(nc, lookup, signingKey, silentLogger);
    responder.start();
  };

  beforeAll(async () => {
    nats = await startNatsServer(natsBin ?? '');
    nc = await natsClient(nats.url);
    // Whatever crosses the values subject and its replies, as anyone on NATS would see it.
    nc.subscribe('>', {
      callback: (_e, m) => {
        seen.push(new TextDecoder().decode(m.data));
      },
    });
  });
  afterAll(async () => {
    await responder?.stop();
    await nc?.close();
    await nats?.destroy();
  });

  it('hands the values to the sidecar that asked, sealed: they never cross NATS in clear', async () => {
    const server = await keys();
    const requestId = randomUUID();
    serve(
      async (id, service) =>
        id === requestId && service === 'orders'
          ? { kind: 'values', subjectId: SUBJECT, values: [['email', 'sealed.value@example.org']] }
          : { kind: 'gone', reason: 'unknown rectification' },
      server.privateKey,
    );
    const got = await fetchChangeValues(nc, { requestId, subjectId: SUBJECT, service: 'orders', verifyKey: server.publicKey, timeoutMs: 5_000 });
    expect(got).toEqual({ kind: 'values', values: [['email', 'sealed.value@example.org']] });
    await nc.flush();
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.join('\n')).not.toContain('sealed.value');

    expect(
      await fetchChangeValues(nc, { requestId: randomUUID(), subjectId: SUBJECT, service: 'orders', verifyKey: server.publicKey, timeoutMs: 5_000 }),
    ).toEqual({
      kind: 'gone',
      reason: 'unknown rectification',
    });
    await responder?.stop();
  });

  it('refuses values signed by another key, or for another subject', async () => {
    const server = await keys();
    const impostor = await keys();
    const requestId = randomUUID();
    serve(async () => ({ kind: 'values', subjectId: SUBJECT, values: [['email', 'x@example.org']] }), impostor.privateKey);
    await expect(fetchChangeValues(nc, { requestId, subjectId: SUBJECT, service: 'orders', verifyKey: server.publicKey, timeoutMs: 5_000 })).rejects.toThrow(
      /signature verification failed/,
    );
    await expect(
      fetchChangeValues(nc, { requestId, subjectId: 'someone-else', service: 'orders', verifyKey: impostor.publicKey, timeoutMs: 5_000 }),
    ).rejects.toThrow('the server signed values for another request or subject');
    await responder?.stop();
  });

  it('answers a malformed request without values, and a sidecar with no server gets an error to retry on', async () => {
    const server = await keys();
    serve(async () => ({ kind: 'values', subjectId: SUBJECT, values: [['email', 'x@example.org']] }), server.privateKey);
    const reply = await nc.request('lethe.change.v1.values', JSON.stringify({ request_id: 'not-a-uuid', service: 'orders' }), { timeout: 5_000 });
    expect(JSON.parse(new TextDecoder().decode(reply.data))).toEqual({ gone: 'not a valid values request' });
    await responder?.stop();
    await expect(
      fetchChangeValues(nc, { requestId: randomUUID(), subjectId: SUBJECT, service: 'orders', verifyKey: server.publicKey, timeoutMs: 1_000 }),
    ).rejects.toThrow();
  });
});
