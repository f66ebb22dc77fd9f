import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadServerConfig } from '../../src/config/config.js';
import { loadSidecarConfig } from '../../src/config/sidecar-config.js';
import { ConfigError } from '../../src/errors.js';
import { ConfirmationState, RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { startLetheServer } from '../../src/server/lethe-server.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { connectNats } from '../../src/events/nats.js';
import { natsTlsOptions } from '../../src/tls/client-credentials.js';
import { ORDERS_DATA_MAP, ORDERS_SERVICE, createOrdersSchema, expectedOrdersRowsAffected, ordersOf, seedOrders } from '../fixtures/downstream/index.js';
import { type TestSidecar, startTestSidecar } from '../fixtures/downstream/sidecar.js';
import { type NatsServer, requireNatsServer, startNatsServer } from '../support/nats.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { waitFor } from '../support/streams.js';
import { type CertFiles, type TestCa, createTestCa } from '../support/tls.js';
import { capturingLogger } from '../support/logs.js';

/**
 * Lethe's own dependencies over TLS, on real servers: PostgreSQL with ssl=on reached through
 * `sslmode=verify-full&sslrootcert=…` in DATABASE_URL, and a nats-server with a `tls {}` block
 * that requires client certificates. A forget goes from the server's outbox over TLS to the orders
 * sidecar (its own database over TLS too) and its receipt comes back the same way.
 */

const pgBin = requirePostgres();
const natsBin = requireNatsServer();

describe.runIf(pgBin !== undefined && natsBin !== undefined)('PostgreSQL and NATS over TLS', () => {
  let dir: string;
  let ca: TestCa;
  let other: TestCa;
  let natsClientCert: CertFiles;
  let cluster: PostgresCluster;
  let nats: NatsServer;
  let identityDb: string;
  let ordersDb: string;
  let orders: Database;
  let server: TestServer;
  let sidecar: TestSidecar;
  /** postgresql://…/db?sslmode=verify-full&sslrootcert=<ca> */
  const tlsUrl = (db: string, caFile = ca.certFile) =>
    `postgresql://postgres@127.0.0.1:${cluster.port}/${db}?sslmode=verify-full&sslrootcert=${encodeURIComponent(caFile)}`;
  let natsEnv: Record<string, string>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lethe-tls-deps-'));
    ca = createTestCa(dir, 'ca');
    other = createTestCa(dir, 'other-ca');
    const pgCert = ca.issue('postgres', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    const natsCert = ca.issue('nats', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    natsClientCert = ca.issue('nats-client', { cn: 'lethe', client: true });
    cluster = await startPostgres(pgBin ?? '', { tls: pgCert });
    nats = await startNatsServer(natsBin ?? '', { tls: { ...natsCert, clientCaFile: ca.certFile } });
    natsEnv = {
      LETHE_NATS_URL: nats.url,
      LETHE_NATS_TLS_CA: ca.certFile,
      LETHE_NATS_TLS_CERT: natsClientCert.certFile,
      LETHE_NATS_TLS_KEY: natsClientCert.keyFile,
    };
    identityDb = new URL(await cluster.createDatabase()).pathname.slice(1);
    ordersDb = new URL(await cluster.createDatabase()).pathname.slice(1);
    orders = await openDatabase({ kind: 'postgres', url: tlsUrl(ordersDb) });
    await createOrdersSchema(orders.knex);
    server = await startTestServer({ DATABASE_URL: tlsUrl(identityDb), LETHE_DOWNSTREAM_SERVICES: ORDERS_SERVICE, ...natsEnv });
    sidecar = await startTestSidecar({ service: ORDERS_SERVICE, databaseUrl: tlsUrl(ordersDb), natsUrl: nats.url, env: natsEnv });
  });

  afterAll(async () => {
    await sidecar?.stop();
    await server?.stop();
    await orders?.close();
    await nats?.destroy();
    await cluster?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('PostgreSQL: verify-full connects over TLS, with the certificate checked', async () => {
    const c = new pg.Client({ connectionString: tlsUrl(identityDb) });
    await c.connect();
    const { rows } = await c.query<{ ssl: boolean; version: string }>('SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
    await c.end();
    expect(rows[0]?.ssl).toBe(true);
    expect(rows[0]?.version).toMatch(/^TLSv1\.[23]$/);
  });

  it('the forget travels over TLS: relay → NATS → sidecar purges its TLS database → receipt → completed', async () => {
    const seed = await seedOrders(orders.knex, 'user-id-123');
    const client = await server.clientAs('platform-owner-id');
    const r = await client.forgetUser({ userId: 'user-id-123', reason: 'GDPR Right to be Forgotten', idempotencyKey: randomUUID() });
    const request = await waitFor('the request completed', async () => {
      const { request: q } = await client.getPrivacyRequest({ id: r.requestId });
      return q?.state === RequestState.REQUEST_STATE_COMPLETED ? q : undefined;
    });
    expect(request.confirmations.map((c) => ({ service: c.service, state: c.state, rowsAffected: c.rowsAffected }))).toEqual([
      { service: ORDERS_SERVICE, state: ConfirmationState.CONFIRMATION_STATE_PURGED, rowsAffected: expectedOrdersRowsAffected(seed) },
    ]);
    for (const o of await ordersOf(orders.knex, 'user-id-123')) expect(o.email).toMatch(/^anonymized-\d+@deleted\.local$/);
  });

  it('PostgreSQL: a CA that did not sign the server certificate stops the server at start-up, saying so', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'lethe-tls-pg-'));
    const url = tlsUrl(identityDb, other.certFile);
    const config = loadServerConfig({ DATABASE_URL: url, LETHE_ARTIFACT_KEY: 'ab'.repeat(32) }, { listen: '127.0.0.1:0', dataDir });
    const err = await startLetheServer(config, capturingLogger().logger).then(
      () => undefined,
      (e: unknown) => e,
    );
    rmSync(dataDir, { recursive: true, force: true });
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toBe(
      `DATABASE_URL: TLS to the database (postgresql://127.0.0.1:${cluster.port}/${identityDb}) failed: the server's certificate is not trusted: it is not signed by the CA you gave (UNABLE_TO_VERIFY_LEAF_SIGNATURE); check sslrootcert`,
    );
  });

  it('PostgreSQL: a sidecar with the wrong CA is refused the same way; a misspelt sslmode or no-verify never starts', async () => {
    await expect(
      startTestSidecar({ service: 'wrong-ca', dataMap: ORDERS_DATA_MAP, databaseUrl: tlsUrl(ordersDb, other.certFile), natsUrl: nats.url, env: natsEnv }),
    ).rejects.toThrow(/^DATABASE_URL: TLS to the database .* the server's certificate is not trusted/);
    const sidecarEnv = (url: string) => () =>
      loadSidecarConfig({ DATABASE_URL: url, LETHE_NATS_URL: nats.url }, { service: 'orders', dataMap: ORDERS_DATA_MAP });
    expect(sidecarEnv(tlsUrl(ordersDb).replace('verify-full', 'verify_full'))).toThrow("sslmode 'verify_full' is not one of");
    expect(sidecarEnv(tlsUrl(ordersDb).replace('verify-full', 'no-verify'))).toThrow('sslmode=no-verify accepts any certificate');
  });

  it('NATS: refuses a client that does not trust its CA, and one without a client certificate', async () => {
    const attempt = (tls: ReturnType<typeof natsTlsOptions>) =>
      connect({ servers: nats.url, tls, reconnect: false, timeout: 3_000 }).then(
        async (nc) => {
          await nc.close();
          return 'connected';
        },
        (e: unknown) => (e instanceof Error ? e.message : String(e)),
      );
    expect(await attempt(natsTlsOptions({ caFile: other.certFile, certFile: natsClientCert.certFile, keyFile: natsClientCert.keyFile }))).not.toBe('connected');
    expect(await attempt(natsTlsOptions({ caFile: ca.certFile, certFile: undefined, keyFile: undefined }))).not.toBe('connected');
    // Plaintext: the server requires TLS.
    expect(
      await connect({ servers: nats.url.replace('tls://', 'nats://'), reconnect: false, timeout: 3_000, tls: null }).then(
        async (nc) => (await nc.close(), 'connected'),
        () => 'refused',
      ),
    ).toBe('refused');
    // And the same options with the right CA and certificate connect.
    expect(await attempt(natsTlsOptions({ caFile: ca.certFile, certFile: natsClientCert.certFile, keyFile: natsClientCert.keyFile }))).toBe('connected');
  });

  it('NATS: a client that does not trust the server says why, once, and keeps retrying', async () => {
    const log = capturingLogger();
    // Never resolves (it waits for a NATS it can trust); the suite's NATS goes away in afterAll.
    void connectNats(
      nats.url,
      'lethe-wrong-ca',
      log.logger,
      natsTlsOptions({ caFile: other.certFile, certFile: natsClientCert.certFile, keyFile: natsClientCert.keyFile }),
    );
    const line = await waitFor('the warning', async () => log.lines().find((l) => l.msg === 'cannot connect to NATS yet: retrying until it answers'), 10_000);
    expect(line).toMatchObject({ nats: nats.url, tls: expect.stringContaining("the server's certificate is not trusted") });
    expect(String(line.tls)).toContain('check LETHE_NATS_TLS_CA');
  });

  it('NATS: a missing CA file stops start-up naming it', () => {
    const missing = join(dir, 'missing-ca.crt');
    expect(() => natsTlsOptions({ caFile: missing, certFile: undefined, keyFile: undefined })).toThrow(`${missing}: does not exist`);
  });
});
