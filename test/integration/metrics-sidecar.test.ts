import { randomUUID } from 'node:crypto';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { anonymizedEventFor } from '../../src/events/cloudevents.js';
import { ensureStream } from '../../src/events/nats.js';
import { ANONYMIZED_SUBJECT } from '../../src/events/subjects.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { ORDERS_SERVICE, createOrdersSchema, seedOrders } from '../fixtures/downstream/index.js';
import { type TestSidecar, startTestSidecar } from '../fixtures/downstream/sidecar.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { sample, scrape } from '../support/prometheus.js';

const pgBin = requirePostgres();
const natsBin = requireNatsServer();

describe.runIf(pgBin !== undefined && natsBin !== undefined)('sidecar metrics on its health listener (PostgreSQL + NATS)', () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let db: Database;
  let s: TestSidecar;

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
  });
  afterAll(async () => {
    await s?.stop();
    await db?.close();
    await nats?.destroy();
    await cluster?.destroy();
  });

  it('counts purged, duplicate, retried and failed events and times purges, without personal data', async () => {
    const url = await cluster.createDatabase();
    db = await openDatabase({ kind: 'postgres', url });
    const user = 'u-metrics-7f3a';
    const held = 'u-metrics-held';
    await createOrdersSchema(db.knex);
    // A legal hold: the database refuses to purge this user's orders.
    await db.knex.raw(`CREATE FUNCTION refuse_purge() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'legal hold'; END $$`);
    await db.knex.raw(`CREATE TRIGGER legal_hold BEFORE UPDATE ON orders FOR EACH ROW WHEN (OLD.user_id = '${held}') EXECUTE FUNCTION refuse_purge()`);
    await seedOrders(db.knex, user);
    await seedOrders(db.knex, held);

    const nc = await connect({ servers: nats.url });
    try {
      await ensureStream(nc, { name: 'LETHE_PRIVACY', replicas: 1, duplicateWindowMs: 120_000, maxAgeMs: 86_400_000 });
      const js = jetstream(nc);
      const publish = async (userId: string, requestId: string) => {
        const event = anonymizedEventFor({ source: '/lethe/test', userId, requestId, anonymizedAt: new Date() });
        await js.publish(ANONYMIZED_SUBJECT, JSON.stringify(event), { msgID: event.id });
      };
      s = await startTestSidecar({
        service: ORDERS_SERVICE,
        databaseUrl: url,
        natsUrl: nats.url,
        env: { LETHE_SIDECAR_MAX_DELIVERIES: '2', LETHE_SIDECAR_RETRY_BASE_MS: '100' },
      });
      const port = Number(new URL(s.healthUrl).port);
      const initial = (await scrape(port)).body;
      for (const outcome of ['purged', 'duplicate', 'retried', 'failed']) expect(sample(initial, 'lethe_sidecar_events_total', { outcome })).toBe(0);

      const requestId = randomUUID();
      const heldRequest = randomUUID();
      await publish(user, requestId);
      await publish(user, requestId); // a second event for the same request: already purged
      await publish(held, heldRequest); // refused: retried once, then a failure receipt
      await js.publish(ANONYMIZED_SUBJECT, JSON.stringify({ type: 'something.else', data: { email: 'jane.doe@example.com' } }), { msgID: 'junk-1' });

      const deadline = Date.now() + 30_000;
      let body = '';
      for (;;) {
        body = (await scrape(port)).body;
        if (
          sample(body, 'lethe_sidecar_events_total', { outcome: 'failed' }) === 2 &&
          sample(body, 'lethe_sidecar_events_total', { outcome: 'duplicate' }) === 1
        )
          break;
        if (Date.now() > deadline) throw new Error(`timed out waiting for the counters:\n${body}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(sample(body, 'lethe_sidecar_events_total', { outcome: 'purged' })).toBe(1);
      expect(sample(body, 'lethe_sidecar_events_total', { outcome: 'duplicate' })).toBe(1);
      expect(sample(body, 'lethe_sidecar_events_total', { outcome: 'retried' })).toBe(1);
      // The held user's last delivery, and the message that is not an anonymization event.
      expect(sample(body, 'lethe_sidecar_events_total', { outcome: 'failed' })).toBe(2);
      // Two purges of the user (one did the work), two refused attempts for the held one.
      expect(sample(body, 'lethe_sidecar_purge_duration_seconds_count')).toBe(4);
      expect(sample(body, 'process_resident_memory_bytes')).toBeGreaterThan(0);
      for (const personal of [user, held, requestId, heldRequest, 'jane.doe', '@example.com']) expect(body).not.toContain(personal);
    } finally {
      await nc.close();
    }
  });
});
