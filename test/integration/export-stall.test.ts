import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { status } from '../support/grpc-status.js';
import { type PostgresCluster, requirePostgres, startPostgres, sqlOn } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

/**
 * A caller that opens ExportUser and stops reading does not keep a pooled connection: after
 * LETHE_EXPORT_STALL_TIMEOUT the snapshot is released while the stream waits, other callers are
 * served, and the stalled call ends ABORTED when its reader comes back.
 */

const bin = requirePostgres();
const NO_LIMIT_MAP = fileURLToPath(new URL('../../bench/export-datamap.yaml', import.meta.url));

describe.runIf(bin !== undefined)('stalled export streams (PostgreSQL)', () => {
  let cluster: PostgresCluster;
  let url: string;
  let t: TestServer;
  const sql = sqlOn(() => url);
  const exportsInFlight = async () =>
    Number(
      (
        await sql<{ n: string }>(`SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY (%' AND state <> 'idle'`)
      )[0]?.n,
    );

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    url = await cluster.createDatabase();
    t = await startTestServer({ DATABASE_URL: url, LETHE_DATA_MAP: NO_LIMIT_MAP, LETHE_EXPORT_STALL_TIMEOUT: '2s' });
    // Far more than the HTTP/2 windows hold, so a reader that stops makes the server wait.
    await sql(`INSERT INTO users (id, email) VALUES ('big-user', 'big@example.com')`);
    await sql(
      `INSERT INTO login_events (id, user_id, timestamp, ip_address, user_agent, provider, success, risk_score, risk_factors, geo_country, geo_city)
       SELECT 'big-' || i, 'big-user', now() - i * interval '1 minute', '192.0.2.1', repeat('x', 200), 'password', true, 1, '[]', 'DE', 'Berlin'
       FROM generate_series(1, 100000) i`,
    );
  });
  afterAll(async () => {
    await t?.stop();
    await cluster?.destroy();
  });

  it('releases the snapshot of a caller who stopped reading, serves others meanwhile, and ends the call ABORTED', async () => {
    const slow = await t.clientAs('big-user');
    const stream = slow.exportUser({ userId: 'big-user', reason: '' })[Symbol.asyncIterator]();
    const first = await stream.next();
    expect(first.value?.part?.$case).toBe('header');
    await vi.waitFor(async () => expect(await exportsInFlight()).toBe(1), { timeout: 5_000, interval: 100 });

    // Nothing read for the stall timeout: the COPY and its connection are gone...
    const stalledAt = Date.now();
    await vi.waitFor(async () => expect(await exportsInFlight()).toBe(0), { timeout: 10_000, interval: 100 });
    const releasedMs = Date.now() - stalledAt;
    // ...the ledger says why...
    const requestId = first.value?.part?.$case === 'header' ? first.value.part.value.requestId : '';
    const [entry] = await sql<{ state: string; error: string }>(`SELECT state, error FROM lethe_privacy_requests WHERE id = $1`, [requestId]);
    expect(entry).toEqual({
      state: 'failed',
      error: 'The export was stopped: the caller read nothing for 2s; read the stream as it comes, or run the export again',
    });
    // ...and another caller is served at once.
    const other = await t.clientAs('platform-owner-id');
    const started = Date.now();
    await other.getPrivacyRequest({ id: requestId });
    expect(Date.now() - started).toBeLessThan(5_000);

    // The stalled reader, reading again, gets what was already on its way, then ABORTED.
    const rest = status(
      (async () => {
        for (let r = await stream.next(); r.done !== true; r = await stream.next()) {
          // draining
        }
      })(),
    );
    expect(await rest).toEqual({
      code: 'ABORTED',
      details: 'The export was stopped: the caller read nothing for 2s; read the stream as it comes, or run the export again',
    });
    console.info(`stall: snapshot released ${releasedMs} ms after the stall was observed (timeout 2 s)`);
  });
});
