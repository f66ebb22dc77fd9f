import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '../support/grpc-status.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';

/**
 * Exports are bounded per server: past LETHE_MAX_CONCURRENT_EXPORTS the excess is answered at
 * once with RESOURCE_EXHAUSTED, so the pool always has connections for every other call.
 */

const bin = requirePostgres();

describe.runIf(bin !== undefined)('concurrent exports on PostgreSQL', () => {
  let cluster: PostgresCluster;
  let t: TestServer;

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    t = await startTestServer({ DATABASE_URL: await cluster.createDatabase() });
  });
  afterAll(async () => {
    await t?.stop();
    await cluster?.destroy();
  });

  it('50 concurrent StoreExport calls complete or are refused at once; other calls are served meanwhile', async () => {
    const client = await t.clientAs('platform-owner-id');
    const subjects = ['user-id-123', 'member-user-id-456', 'owner-user-id-1', 'owner-user-id-2'];
    const started = Date.now();
    const calls = Array.from({ length: 50 }, (_, i) =>
      status(client.storeExport({ userId: subjects[i % subjects.length] ?? '', reason: '', idempotencyKey: `limits-${i}`, requestedBy: '' })),
    );
    // A unary call in the middle of it all gets a connection.
    const unaryStarted = Date.now();
    const listed = await client.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: false, pageSize: 10, pageToken: '' });
    const unaryMs = Date.now() - unaryStarted;
    const results = await Promise.all(calls);

    const codes = new Map<string, number>();
    for (const r of results) codes.set(r.code, (codes.get(r.code) ?? 0) + 1);
    expect([...codes.keys()].sort()).toEqual(['OK', 'RESOURCE_EXHAUSTED']);
    const refused = results.filter((r) => r.code === 'RESOURCE_EXHAUSTED');
    for (const r of refused) expect(r.details).toBe('4 exports are already running on this server; retry in a few seconds');
    expect(listed.requests.length).toBeGreaterThanOrEqual(0);
    expect(unaryMs).toBeLessThan(5_000);
    console.info(
      `exports: ${codes.get('OK')} stored, ${refused.length} refused at once, in ${Date.now() - started} ms; a unary call meanwhile took ${unaryMs} ms`,
    );

    // The refused ones, retried one at a time, all complete.
    for (const [i, r] of results.entries()) {
      if (r.code !== 'RESOURCE_EXHAUSTED') continue;
      const again = await client.storeExport({ userId: subjects[i % subjects.length] ?? '', reason: '', idempotencyKey: `limits-${i}`, requestedBy: '' });
      expect(again.artifact?.sizeBytes).toBeGreaterThan(0);
    }
  });
});
