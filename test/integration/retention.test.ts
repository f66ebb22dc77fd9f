import { randomUUID } from 'node:crypto';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ensureStream } from '../../src/events/nats.js';
import { OutboxRelay } from '../../src/events/outbox-relay.js';
import { STREAM_SUBJECTS } from '../../src/events/subjects.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { migrateLethe } from '../../src/store/migrations.js';
import { silentLogger } from '../support/engine-fixture.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { natsClient } from '../support/streams.js';

/** Lethe's own records do not grow for ever: the outbox and the stream forget subject ids after a while. */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();
const DAY = 86_400_000;

describe.runIf(pgBin !== undefined && natsBin !== undefined)("retention of Lethe's own records", () => {
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let nc: NatsConnection;
  let db: Database;

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    nats = await startNatsServer(natsBin ?? '');
    nc = await natsClient(nats.url);
    db = await openDatabase({ kind: 'postgres', url: await cluster.createDatabase() });
    await migrateLethe(db.knex);
  });
  afterAll(async () => {
    await db?.close();
    await nc?.close();
    await nats?.destroy();
    await cluster?.destroy();
  });

  it('creates the stream with the age limit, gives one to a stream that had none, and keeps an owner-chosen one', async () => {
    const settings = { replicas: 1, duplicateWindowMs: 120_000, maxAgeMs: 30 * DAY };
    const jsm = await ensureStream(nc, { name: 'RET_NEW', ...settings });
    expect((await jsm.streams.info('RET_NEW')).config.max_age).toBe(30 * DAY * 1_000_000);

    await jsm.streams.add({ name: 'RET_UNLIMITED', subjects: ['ret.unlimited.>'] });
    await ensureStream(nc, { name: 'RET_UNLIMITED', ...settings });
    expect((await jsm.streams.info('RET_UNLIMITED')).config.max_age).toBe(30 * DAY * 1_000_000);

    await jsm.streams.add({ name: 'RET_OWNED', subjects: ['ret.owned.>'], max_age: 2 * DAY * 1_000_000 });
    await ensureStream(nc, { name: 'RET_OWNED', ...settings });
    expect((await jsm.streams.info('RET_OWNED')).config.max_age).toBe(2 * DAY * 1_000_000);
    await jsm.streams.delete('RET_NEW'); // it holds the privacy subjects the next test's stream needs
  });

  it('deletes published outbox rows past the retention, never pending or recent ones', async () => {
    const now = new Date();
    const row = (sentAt: Date | null, createdAt: Date) => ({
      id: randomUUID(),
      subject: 'privacy.v1.user.anonymized',
      payload: '{"subject":"x"}',
      created_at: createdAt,
      sent_at: sentAt,
    });
    const old = row(new Date(now.getTime() - 8 * DAY), new Date(now.getTime() - 8 * DAY));
    const recent = row(new Date(now.getTime() - DAY), new Date(now.getTime() - DAY));
    const pending = row(null, new Date(now.getTime() - 9 * DAY));
    await db.knex('lethe_outbox').insert([old, recent, pending]);

    const jsm = await jetstreamManager(nc);
    await ensureStream(nc, { name: 'LETHE_PRIVACY', replicas: 1, duplicateWindowMs: 120_000, maxAgeMs: 30 * DAY });
    expect((await jsm.streams.info('LETHE_PRIVACY')).config.subjects).toEqual([STREAM_SUBJECTS]);
    const relay = new OutboxRelay(db.knex, jetstream(nc), silentLogger, { retentionMs: 7 * DAY, cleanupIntervalMs: 50, pollMs: 50 });
    relay.start();
    try {
      await vi.waitFor(async () => expect(await db.knex('lethe_outbox').orderBy('created_at').pluck('id')).toEqual([pending.id, recent.id]), {
        timeout: 10_000,
        interval: 50,
      });
      // The pending row was published first, and stays until its own retention has passed.
      expect((await db.knex('lethe_outbox').where({ id: pending.id }).first())?.sent_at).not.toBeNull();
    } finally {
      await relay.stop();
    }
  });
});
