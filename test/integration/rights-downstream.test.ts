import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfirmationState, ConsentState, ProcessingBasis, RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import type { PrivacyClient } from '../../src/client/privacy-client.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { CRM_DATA_MAP, ORDERS_SERVICE, createCrmSchema, createOrdersSchema, seedOrders } from '../fixtures/downstream/index.js';
import { type TestSidecar, startTestSidecar } from '../fixtures/downstream/sidecar.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { natsClient, storedMessages, waitFor } from '../support/streams.js';

/**
 * Rectification and processing choices carried to every copy: a server and two real sidecars with
 * different data maps (orders keeps the email on each order; crm in a unique column of another
 * name), each confirming with a receipt in the ledger; a sidecar down during a change catches up
 * exactly once; a change one service's database refuses fails with the reason.
 */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();
const CRM = 'crm';
const SUBJECT = 'user-id-123';

describe.runIf(pgBin !== undefined && natsBin !== undefined)('rectification and restriction reach every copy', () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let orders: Database;
  let crm: Database;
  let crmUrl: string;
  let server: TestServer;
  let ordersSidecar: TestSidecar;
  let crmSidecar: TestSidecar | undefined;
  let nc: NatsConnection;
  let person: PrivacyClient;
  const env = () => ({ LETHE_EXPORT_VERIFY_KEY_FILE: join(server.dataDir, 'export-signing-key.pub.pem') });
  const startCrm = async () => startTestSidecar({ service: CRM, databaseUrl: crmUrl, natsUrl: nats.url, dataMap: CRM_DATA_MAP, env: env() });

  /** The request once it has left `applied` (every service answered, or one failed). */
  const settled = (id: string) =>
    waitFor(`request ${id} settled`, async () => {
      const r = (await person.getPrivacyRequest({ id })).request;
      return r !== undefined && r.state !== RequestState.REQUEST_STATE_APPLIED ? r : undefined;
    });
  const confirmations = (r: { confirmations: Array<{ service: string; state: ConfirmationState }> }) =>
    Object.fromEntries(r.confirmations.map((c) => [c.service, ConfirmationState[c.state]]));

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
    const identityUrl = await cluster.createDatabase();
    const ordersUrl = await cluster.createDatabase();
    crmUrl = await cluster.createDatabase();
    orders = await openDatabase({ kind: 'postgres', url: ordersUrl });
    crm = await openDatabase({ kind: 'postgres', url: crmUrl });
    await createOrdersSchema(orders.knex);
    await createCrmSchema(crm.knex);
    await seedOrders(orders.knex, SUBJECT);
    await crm.knex('contacts').insert([
      { user_id: SUBJECT, contact_email: 'user123@example.com', display_name: 'User 123' },
      { user_id: 'someone-else', contact_email: 'taken@example.org', display_name: 'Someone' },
    ]);
    server = await startTestServer({ DATABASE_URL: identityUrl, LETHE_NATS_URL: nats.url, LETHE_DOWNSTREAM_SERVICES: `${ORDERS_SERVICE},${CRM}` });
    ordersSidecar = await startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: ordersUrl, natsUrl: nats.url, env: env() });
    crmSidecar = await startCrm();
    nc = await natsClient(nats.url);
    person = await server.clientAs(SUBJECT);
  });

  afterAll(async () => {
    await nc?.close();
    await crmSidecar?.stop();
    await ordersSidecar?.stop();
    await server?.stop();
    await orders?.close();
    await crm?.close();
    await nats?.destroy();
    await cluster?.destroy();
  });

  it('a rectification changes both copies, each confirms, and no stream or log holds the value', async () => {
    const r = await person.rectifyUser({ userId: SUBJECT, changes: { email: 'fresh.address@example.net' }, reason: 'new address', idempotencyKey: 'rect-1' });
    expect(r.request?.state).toBe(RequestState.REQUEST_STATE_APPLIED);
    const done = await settled(r.request?.id ?? '');
    expect(RequestState[done.state]).toBe('REQUEST_STATE_COMPLETED');
    expect(confirmations(done)).toEqual({ crm: 'CONFIRMATION_STATE_APPLIED', orders: 'CONFIRMATION_STATE_APPLIED' });
    expect(done.confirmations.find((c) => c.service === ORDERS_SERVICE)?.rowsAffected).toEqual([{ table: 'orders', action: 'update', rows: 2 }]);
    expect(done.fields).toEqual(['email']);

    expect(await orders.knex('orders').where({ user_id: SUBJECT }).pluck('email')).toEqual(['fresh.address@example.net', 'fresh.address@example.net']);
    expect(await crm.knex('contacts').where({ user_id: SUBJECT }).pluck('contact_email')).toEqual(['fresh.address@example.net']);
    const stored = await storedMessages(nc, 'LETHE_PRIVACY');
    expect(stored.length).toBeGreaterThan(0);
    expect(stored.map((m) => JSON.stringify(m.json)).join('\n')).not.toContain('fresh.address');
    expect(stored.some((m) => m.subject === 'privacy.v1.change.rectified')).toBe(true);
    expect(ordersSidecar.logText()).not.toContain('fresh.address');
    expect(crmSidecar?.logText()).not.toContain('fresh.address');
  });

  it('a restriction reaches both services’ flags table', async () => {
    const r = await person.restrictProcessing({
      userId: SUBJECT,
      purposes: ['marketing'],
      basis: ProcessingBasis.PROCESSING_BASIS_OBJECTION,
      reason: '',
      idempotencyKey: 'restrict-1',
    });
    expect(r.purposes.find((p) => p.purpose === 'marketing')).toMatchObject({ objected: true, restricted: false, consent: ConsentState.CONSENT_STATE_NONE });
    const done = await settled(r.request?.id ?? '');
    expect(confirmations(done)).toEqual({ crm: 'CONFIRMATION_STATE_APPLIED', orders: 'CONFIRMATION_STATE_APPLIED' });
    for (const db of [orders, crm]) {
      expect(
        await db.knex('lethe_processing_flags').where({ subject_id: SUBJECT }).orderBy('purpose').select('purpose', 'restricted', 'objected', 'consent'),
      ).toEqual([
        { purpose: 'analytics', restricted: false, objected: false, consent: 'none' },
        { purpose: 'marketing', restricted: false, objected: true, consent: 'none' },
        { purpose: 'profiling', restricted: false, objected: false, consent: 'none' },
      ]);
    }
  });

  it('a sidecar down during a change catches up when it returns, exactly once', async () => {
    await crmSidecar?.stop();
    crmSidecar = undefined;
    const r = await person.rectifyUser({ userId: SUBJECT, changes: { email: 'while.down@example.net' }, reason: '', idempotencyKey: 'rect-2' });
    const id = r.request?.id ?? '';
    await waitFor('orders applied', async () => {
      const now = (await person.getPrivacyRequest({ id })).request;
      return now?.confirmations.some((c) => c.service === ORDERS_SERVICE && c.state === ConfirmationState.CONFIRMATION_STATE_APPLIED) ? now : undefined;
    });
    const waiting = (await person.getPrivacyRequest({ id })).request;
    expect(waiting?.state).toBe(RequestState.REQUEST_STATE_APPLIED);
    expect(confirmations(waiting ?? { confirmations: [] })).toEqual({ crm: 'CONFIRMATION_STATE_PENDING', orders: 'CONFIRMATION_STATE_APPLIED' });
    expect(await crm.knex('contacts').where({ user_id: SUBJECT }).pluck('contact_email')).toEqual(['fresh.address@example.net']);

    crmSidecar = await startCrm();
    const done = await settled(id);
    expect(confirmations(done)).toEqual({ crm: 'CONFIRMATION_STATE_APPLIED', orders: 'CONFIRMATION_STATE_APPLIED' });
    expect(await crm.knex('contacts').where({ user_id: SUBJECT }).pluck('contact_email')).toEqual(['while.down@example.net']);
    expect(await crm.knex('lethe_changes').where({ request_id: id }).select('status')).toEqual([{ status: 'applied' }]);
    expect(done.confirmations.find((c) => c.service === CRM)?.rowsAffected).toEqual([{ table: 'contacts', action: 'update', rows: 1 }]);
  });

  it('a change a service’s database refuses fails the request with that service’s reason, and the other copy still changes', async () => {
    const r = await person.rectifyUser({ userId: SUBJECT, changes: { email: 'taken@example.org' }, reason: '', idempotencyKey: 'rect-3' });
    const done = await settled(r.request?.id ?? '');
    expect(RequestState[done.state]).toBe('REQUEST_STATE_FAILED');
    expect(done.error).toBe('crm could not apply the change: The new value of email is already used by another record (contacts); nothing was changed');
    expect(await crm.knex('contacts').where({ user_id: SUBJECT }).pluck('contact_email')).toEqual(['while.down@example.net']);
    // The request failed on crm's receipt; orders applies the change on its own schedule, and confirms it.
    await waitFor('orders to confirm the change', async () => {
      const r = (await person.getPrivacyRequest({ id: done.id })).request;
      return r?.confirmations.some((c) => c.service === ORDERS_SERVICE && c.state === ConfirmationState.CONFIRMATION_STATE_APPLIED) ? r : undefined;
    });
    expect(await orders.knex('orders').where({ user_id: SUBJECT }).pluck('email')).toEqual(['taken@example.org', 'taken@example.org']);
  });

  it('after a forget, a late change resurrects nothing', async () => {
    const admin = await server.clientAs('platform-owner-id');
    const consent = await person.recordConsent({ userId: SUBJECT, purpose: 'analytics', textVersion: 'v1', textSha256: '', source: 'web-signup' });
    expect(consent.alreadyGiven).toBe(false);
    await waitFor(
      'crm flags for the consent',
      async () => (await crm.knex('lethe_processing_flags').where({ subject_id: SUBJECT, purpose: 'analytics', consent: 'given' }).first()) as unknown,
    );
    const forget = await admin.forgetUser({ userId: SUBJECT, reason: 'GDPR', idempotencyKey: 'forget-1' });
    await waitFor('forget completed', async () => {
      const f = (await admin.getPrivacyRequest({ id: forget.requestId })).request;
      return f?.state === RequestState.REQUEST_STATE_COMPLETED ? f : undefined;
    });
    for (const db of [orders, crm]) expect(await db.knex('lethe_processing_flags').where({ subject_id: SUBJECT })).toEqual([]);
    await expect(person.restrictProcessing({ userId: SUBJECT, purposes: ['marketing'], basis: 0, reason: '', idempotencyKey: 'late' })).rejects.toThrow(
      'User data has been anonymized; it can no longer be rectified or have processing choices changed',
    );
  });
});
