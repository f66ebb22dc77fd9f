import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { HealthCheckResponse_ServingStatus as ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/errors.js';
import { LIVENESS_SERVICE } from '../../src/server/grpc-server.js';
import { DEFAULT_DATABASE_TIMEOUTS, openDatabase } from '../../src/store/database.js';
import { translateDatabaseError } from '../../src/store/errors.js';
import { queriesOf } from '../../src/store/session.js';
import { readJsonRows } from '../../src/privacy/row-cursor.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { status } from '../support/grpc-status.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

/**
 * A stalled database (every PostgreSQL process SIGSTOPped: connections are accepted and nothing
 * answers, as in a network partition) with the default timeouts: calls answer UNAVAILABLE within
 * 30 s instead of hanging until the client gives up; readiness (health '') turns NOT_SERVING
 * within 30 s while liveness stays SERVING; both come back when the database does.
 */

const bin = requirePostgres();
const BOUND_MS = 30_000;
const list = { subjectId: '', state: 0, overdueOnly: false, pageSize: 5, pageToken: '' };

describe.runIf(bin !== undefined)('a stalled database (SIGSTOP), default timeouts', () => {
  let cluster: PostgresCluster;
  let t: TestServer;

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    t = await startTestServer({ DATABASE_URL: await cluster.createDatabase(), LETHE_METRICS_LISTEN: '127.0.0.1:0' });
  });
  afterAll(async () => {
    cluster?.resume();
    await t?.stop();
    await cluster?.destroy();
  });

  it('answers UNAVAILABLE within 30 s, reports NOT_SERVING for readiness (not liveness), and recovers', async () => {
    const client = await t.clientAs('platform-owner-id');
    const health = createClient(HealthDefinition, createChannel(t.address));
    const check = async (service: string) => (await health.check({ service }, { signal: AbortSignal.timeout(5_000) })).status;
    const readyz = async () => (await fetch(`http://127.0.0.1:${t.server.metricsPort}/readyz`)).status;
    // Warm: the pool holds connections that will now stall mid-query.
    expect((await client.listPrivacyRequests(list)).requests).toBeInstanceOf(Array);
    expect(await check('')).toBe(ServingStatus.SERVING);

    cluster.pause();
    const stalledAt = performance.now();
    const since = () => Math.round(performance.now() - stalledAt);
    // The clients would wait a minute: whatever comes sooner is the server's answer.
    const deadline = () => ({ signal: AbortSignal.timeout(60_000) });
    const calls = Promise.all([
      status(client.listPrivacyRequests(list, deadline())).then((s) => ({ ...s, ms: since() })),
      status(client.forgetUser({ userId: 'member-user-id-456', reason: 'stall', idempotencyKey: 'stall-1' }, deadline())).then((s) => ({ ...s, ms: since() })),
      status(client.getPrivacyRequest({ id: '00000000-0000-4000-8000-000000000000' }, deadline())).then((s) => ({ ...s, ms: since() })),
    ]);
    let notServingMs: number | undefined;
    while (notServingMs === undefined && since() < BOUND_MS + 5_000) {
      if ((await check('')) === ServingStatus.NOT_SERVING) notServingMs = since();
      else await new Promise((r) => setTimeout(r, 250));
    }
    expect(await check(LIVENESS_SERVICE)).toBe(ServingStatus.SERVING);
    expect(await check('lethe.privacy.v1.PrivacyService')).toBe(ServingStatus.NOT_SERVING);
    expect(await readyz()).toBe(503);
    const answered = await calls;
    console.log(`database stall: NOT_SERVING after ${notServingMs} ms; calls answered ${JSON.stringify(answered)}`);
    expect(notServingMs).toBeLessThan(BOUND_MS);
    for (const a of answered) {
      expect(a).toMatchObject({ code: 'UNAVAILABLE', details: 'The database is unavailable; retry later' });
      expect(a.ms).toBeLessThan(BOUND_MS);
    }

    cluster.resume();
    const resumedAt = performance.now();
    while ((await check('')) !== ServingStatus.SERVING) {
      expect(performance.now() - resumedAt).toBeLessThan(BOUND_MS);
      await new Promise((r) => setTimeout(r, 250));
    }
    console.log(`database stall: SERVING again ${Math.round(performance.now() - resumedAt)} ms after SIGCONT`);
    expect((await client.listPrivacyRequests(list)).requests).toBeInstanceOf(Array);
    expect(await readyz()).toBe(200);
  }, 120_000);

  it('sets the server-side timeouts on every connection; a statement over them is UNAVAILABLE', async () => {
    const db = await openDatabase({
      kind: 'postgres',
      url: await cluster.createDatabase(),
      timeouts: { ...DEFAULT_DATABASE_TIMEOUTS, statementTimeoutMs: 300, queryTimeoutMs: 5_000 },
    });
    try {
      const show = async (name: string) => ((await db.knex.raw(`SHOW ${name}`)) as { rows: Array<Record<string, string>> }).rows[0]?.[name];
      expect(await show('statement_timeout')).toBe('300ms');
      expect(await show('lock_timeout')).toBe('10s');
      expect(await show('idle_in_transaction_session_timeout')).toBe('5min');
      const err = await db.knex.raw('SELECT pg_sleep(2)').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(translateDatabaseError(err)).toBeInstanceOf(UnavailableError);
      // The connection stays usable: the server ended the statement cleanly.
      expect(await show('statement_timeout')).toBe('300ms');
    } finally {
      await db.close();
    }
  });

  it("lets an export's COPY outlast both statement timeouts while its reader is slow", async () => {
    const timeouts = { ...DEFAULT_DATABASE_TIMEOUTS, statementTimeoutMs: 300, queryTimeoutMs: 600 };
    const db = await openDatabase({ kind: 'postgres', url: await cluster.createDatabase(), timeouts });
    try {
      // ~16 MB: more than the socket buffers hold, so the server waits on the reader.
      const query = { sql: "SELECT repeat('x', 800) AS j FROM generate_series(1, 20000)", bindings: [] };
      let rows = 0;
      const started = performance.now();
      await db.knex.transaction(async (trx) => {
        for await (const page of readJsonRows(queriesOf(trx), query, { rows: 1_000 }, new AbortController().signal)) {
          rows += page.length;
          if (rows <= 3_000) await new Promise((r) => setTimeout(r, 400));
        }
      });
      expect(rows).toBe(20_000);
      expect(performance.now() - started).toBeGreaterThan(timeouts.queryTimeoutMs);
      // Other statements still have them.
      expect(((await db.knex.raw('SHOW statement_timeout')) as { rows: Array<{ statement_timeout: string }> }).rows[0]?.statement_timeout).toBe('300ms');
    } finally {
      await db.close();
    }
  });
});
