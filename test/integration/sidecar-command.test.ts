import { AckPolicy } from '@nats-io/jetstream';
import { beforeAll, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { ANONYMIZED_SUBJECT, RECEIPTS_FILTER } from '../../src/events/subjects.js';
import {
  ANALYTICS_DATA_MAP,
  ANALYTICS_SERVICE,
  ORDERS_DATA_MAP,
  ORDERS_SERVICE,
  createAnalyticsSchema,
  createOrdersSchema,
  seedAnalytics,
} from '../fixtures/downstream/index.js';
import { startTestSidecar } from '../fixtures/downstream/sidecar.js';
import type { PostgresCluster } from '../support/postgres.js';
import { STREAM, eventually, describeSidecar, spawnLethe } from '../support/sidecar-harness.js';

/**
 * `lethe sidecar` against a real PostgreSQL and a real nats-server (set-up:
 * test/support/sidecar-harness.ts): the command (logs, SIGTERM, a bad setting) and its start-up
 * checks.
 */
describeSidecar('the command and start-up', (suite) => {
  const { later, bus, database, sidecar, consumerInfo } = suite;
  let cluster: PostgresCluster;
  beforeAll(() => {
    cluster = suite.cluster;
  });

  it('the command: logs where it works without credentials, drains on SIGTERM and exits 0; a bad setting is one line and exit code 2', async () => {
    const b = await bus();
    const analytics = await database(createAnalyticsSchema);
    const user = 'u-cli';
    await seedAnalytics(analytics.db.knex, user);
    // The test cluster trusts every connection, so a password in the URL is accepted and ignored.
    const url = new URL(analytics.url);
    url.password = 'hunter2';
    const cmd = spawnLethe(['sidecar', '--service', ANALYTICS_SERVICE, '--data-map', ANALYTICS_DATA_MAP, '--health-listen', '127.0.0.1:0'], {
      DATABASE_URL: url.toString(),
      LETHE_NATS_URL: b.server.url,
    });
    later(async () => {
      if (cmd.child.exitCode === null && cmd.child.signalCode === null) cmd.child.kill('SIGKILL');
    });
    const running = await eventually(
      'the command to run',
      () => {
        if (cmd.child.exitCode !== null) throw new Error(`lethe sidecar exited: ${cmd.output()}`);
        return cmd.lines().find((l) => l.msg === 'lethe sidecar running');
      },
      60_000,
    );
    expect(running).toMatchObject({
      service: 'lethe-sidecar',
      downstream: 'analytics',
      database: `postgresql://127.0.0.1:${cluster.port}${url.pathname}`,
      dataMap: ANALYTICS_DATA_MAP,
      nats: b.server.url,
      stream: STREAM,
      consumer: 'analytics',
      concurrency: 8,
      maxDeliveries: 5,
    });
    expect((await fetch(`http://${String(running.health)}/readyz`)).status).toBe(200);

    const requestId = await b.publishAnonymized(user);
    await eventually('the receipt', () => (b.receiptsFor(requestId).length > 0 ? true : undefined));
    const signalledAt = Date.now();
    cmd.child.kill('SIGTERM');
    expect(await cmd.exited(30_000), cmd.output()).toEqual({ code: 0, signal: null });
    // Nothing was in flight: the drain is quick, and nothing (a timer, a socket) holds the process up.
    expect(Date.now() - signalledAt).toBeLessThan(5_000);
    expect(cmd.lines().map((l) => l.msg)).toEqual(expect.arrayContaining(['shutting down', 'sidecar stopped']));
    expect(cmd.output()).not.toContain('hunter2');
    expect(cmd.output()).not.toContain(user);
    expect(await consumerInfo(b, ANALYTICS_SERVICE)).toMatchObject({ num_ack_pending: 0, num_pending: 0 });

    const bad = spawnLethe(['sidecar', '--service', ANALYTICS_SERVICE, '--data-map', ANALYTICS_DATA_MAP], {
      DATABASE_URL: url.toString(),
      LETHE_NATS_URL: b.server.url,
      LETHE_SIDECAR_CONCURRENCY: '0',
    });
    expect(await bad.exited()).toEqual({ code: 2, signal: null });
    expect(bad.output()).toBe('lethe: configuration: LETHE_SIDECAR_CONCURRENCY: must be a whole number from 1 to 64\n');
  });

  it('start-up: refuses a data map that does not match the database, a hash without a key, and a foreign consumer; updates its own', async () => {
    const b = await bus();
    const analytics = await database(createAnalyticsSchema);
    const orders = await database(createOrdersSchema);
    const empty = await database(async () => undefined);
    await expect(startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: empty.url, natsUrl: b.server.url })).rejects.toThrow(
      new ConfigError(
        "categories.shipping_addresses.subject.via.column: table 'shipping_addresses' does not exist in the database (run the migrations, or fix the data map)",
        ORDERS_DATA_MAP,
      ),
    );
    await expect(
      startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url, env: { LETHE_HASH_KEY: undefined } }),
    ).rejects.toThrow(new ConfigError(`required: the data map ${ORDERS_DATA_MAP} uses the hash action (openssl rand -hex 32)`, 'LETHE_HASH_KEY'));

    // A consumer named after the service that is something else is never taken over.
    await b.jsm.consumers.add(STREAM, { durable_name: ORDERS_SERVICE, filter_subject: RECEIPTS_FILTER, ack_policy: AckPolicy.Explicit });
    await expect(startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: orders.url, natsUrl: b.server.url })).rejects.toThrow(
      new ConfigError(
        `consumer 'orders' on stream '${STREAM}' exists but is not a lethe sidecar consumer (a pull consumer of ${ANONYMIZED_SUBJECT} with explicit acks): choose another service name, or remove that consumer`,
        '--service',
      ),
    );
    expect((await consumerInfo(b, ORDERS_SERVICE)).config.filter_subject).toBe(RECEIPTS_FILTER);

    // Its own consumer, made with other settings (an older deployment), is brought in line.
    await b.jsm.consumers.add(STREAM, {
      durable_name: ANALYTICS_SERVICE,
      filter_subject: ANONYMIZED_SUBJECT,
      ack_policy: AckPolicy.Explicit,
      ack_wait: 30_000_000_000,
      max_deliver: 10,
    });
    await sidecar({ service: ANALYTICS_SERVICE, databaseUrl: analytics.url, natsUrl: b.server.url, env: { LETHE_SIDECAR_ACK_WAIT: '2' } });
    expect((await consumerInfo(b, ANALYTICS_SERVICE)).config).toMatchObject({ ack_wait: 2_000_000_000, max_deliver: -1, filter_subject: ANONYMIZED_SUBJECT });
  });
});
