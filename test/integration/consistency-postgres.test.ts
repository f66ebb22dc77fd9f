import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelledError } from '../../src/errors.js';
import { DEFAULT_DATA_MAP_PATH, loadDataMap } from '../../src/privacy/data-map.js';
import { type ExportEvent, PrivacyEngine } from '../../src/privacy/engine.js';
import type { Principal } from '../../src/privacy/principal.js';
import { prepareServerDataMap } from '../../src/privacy/lethe-tables.js';
import { type Database, openDatabase } from '../../src/store/database.js';
import { collectExport, demoEngine, silentLogger } from '../support/engine-fixture.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';

/** What needs real concurrency, which only PostgreSQL (not single-connection PGlite) has. */

const bin = requirePostgres();
const platform: Principal = { id: 'platform-owner-id', role: 'user' };

describe.runIf(bin !== undefined)('consistency under concurrency (PostgreSQL)', () => {
  let cluster: PostgresCluster;
  let db: Database;
  let engine: PrivacyEngine;
  /** Fetches five rows at a time, so a 50-event export spans many round trips. */
  let slowEngine: PrivacyEngine;

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    db = await openDatabase({ kind: 'postgres', url: await cluster.createDatabase() });
    engine = await demoEngine(db);
    const dataMap = await loadDataMap(DEFAULT_DATA_MAP_PATH);
    const { columnTypes, forgetPlan } = await prepareServerDataMap(db.knex, dataMap, 'test', undefined);
    slowEngine = new PrivacyEngine({ knex: db.knex, dataMap, columnTypes, forgetPlan, logger: silentLogger, exportFetchRows: 5 });
  });
  afterAll(async () => {
    await db?.close();
    await cluster?.destroy();
  });

  it('two concurrent forgets of one user anonymize once', async () => {
    const forget = (key: string) => engine.forgetUser(platform, { userId: 'member-user-id-456', reason: 'GDPR Right to be Forgotten', idempotencyKey: key });
    const results = await Promise.all([forget('concurrent-a'), forget('concurrent-b'), forget('concurrent-c')]);
    expect(results.filter((r) => r.rowsAffected.length > 0)).toHaveLength(1);
    expect(await db.knex('audit_log').where({ event_type: 'user_anonymized', target_id: 'member-user-id-456' }).pluck('actor_id')).toEqual([
      'platform-owner-id',
    ]);
  });

  it('two concurrent calls with one idempotency key run once and answer alike', async () => {
    const forget = () => engine.forgetUser(platform, { userId: 'owner-user-id-1', reason: 'GDPR Right to be Forgotten', idempotencyKey: 'same-key' });
    const [a, b] = await Promise.all([forget(), forget()]);
    expect(a?.requestId).toBe(b?.requestId);
    expect([a?.replayed, b?.replayed].sort()).toEqual([false, true]);
    expect(await db.knex('lethe_privacy_requests').where({ idempotency_key: 'same-key' }).count<{ count: number }[]>('* as count')).toEqual([{ count: 1 }]);
  });

  it('records receipts of one request that arrive at once: the last of them completes it, exactly once', async () => {
    const dataMap = await loadDataMap(DEFAULT_DATA_MAP_PATH);
    const { columnTypes, forgetPlan } = await prepareServerDataMap(db.knex, dataMap, 'test', undefined);
    const services = ['orders', 'analytics', 'search'];
    const waiting = new PrivacyEngine({ knex: db.knex, dataMap, columnTypes, forgetPlan, logger: silentLogger, expectedServices: services });
    const users = Array.from({ length: 10 }, (_, i) => `receipt-user-${i}`);
    await db.knex('users').insert(users.map((id) => ({ id, email: `${id}@example.com` })));
    const one = (requestId: string, service: string, status: 'purged' | 'failed') => ({
      requestId,
      service,
      status,
      rowsAffected: [],
      purgedAt: new Date(),
      error: status === 'failed' ? 'disk full' : undefined,
    });
    const receipt = async (requestId: string, service: string, status: 'purged' | 'failed') =>
      (await waiting.recordConfirmations([one(requestId, service, status)]))[0];
    for (const userId of users.slice(0, 8)) {
      const { requestId } = await waiting.forgetUser(platform, { userId, reason: 'GDPR Right to be Forgotten', idempotencyKey: `receipts-${userId}` });
      // One service fails first and confirms later; its two receipts race the others'.
      const outcomes = await Promise.all([
        receipt(requestId, 'orders', 'purged'),
        receipt(requestId, 'analytics', 'failed').then(async (first) => [first, await receipt(requestId, 'analytics', 'purged')]),
        receipt(requestId, 'search', 'purged'),
      ]);
      expect(outcomes.flat().filter((o) => o === 'completed')).toHaveLength(1);
      expect(await waiting.getRequest(platform, requestId)).toMatchObject({ state: 'completed', pending: [] });
    }
    // A purge confirmed, then the same service's failure: the request waits again for it.
    const { requestId } = await waiting.forgetUser(platform, {
      userId: 'owner-user-id-2',
      reason: 'GDPR Right to be Forgotten',
      idempotencyKey: 'receipts-replaced',
    });
    expect(await receipt(requestId, 'orders', 'purged')).toBe('recorded');
    expect(await receipt(requestId, 'orders', 'failed')).toBe('recorded');
    expect(await receipt(requestId, 'analytics', 'purged')).toBe('recorded');
    expect(await receipt(requestId, 'search', 'purged')).toBe('recorded');
    expect(await receipt(requestId, 'orders', 'purged')).toBe('completed');
    expect(await receipt(requestId, 'orders', 'purged')).toBe('recorded');
    expect(await receipt('00000000-0000-4000-8000-000000000000', 'orders', 'purged')).toBe('unknown-request');

    // A batch: receipts of several requests, one service's failure then its purge, an unknown request.
    const ids: string[] = [];
    for (const userId of users.slice(8))
      ids.push((await waiting.forgetUser(platform, { userId, reason: 'GDPR Right to be Forgotten', idempotencyKey: `batch-${userId}` })).requestId);
    const [a = '', b = ''] = ids;
    const outcomes = await waiting.recordConfirmations([
      one(a, 'orders', 'purged'),
      one(b, 'orders', 'purged'),
      one(a, 'analytics', 'failed'),
      one('00000000-0000-4000-8000-000000000000', 'orders', 'purged'),
      one(a, 'search', 'purged'),
      one(a, 'analytics', 'purged'),
      one(b, 'analytics', 'failed'),
    ]);
    expect(outcomes).toEqual(['recorded', 'recorded', 'recorded', 'unknown-request', 'recorded', 'completed', 'recorded']);
    expect(await waiting.getRequest(platform, a)).toMatchObject({ state: 'completed' });
    expect(await waiting.getRequest(platform, b)).toMatchObject({ state: 'anonymized', pending: ['search'] });
    expect((await waiting.getRequest(platform, b)).confirmations.map((c) => [c.service, c.status])).toEqual([
      ['analytics', 'failed'],
      ['orders', 'purged'],
    ]);
  });

  it('reads one snapshot: a forget committing mid-export does not half-anonymize the export', async () => {
    const events = slowEngine.exportUser(platform, { userId: 'user-id-123', reason: '' }, new AbortController().signal);
    const seen: ExportEvent[] = [];
    let forgot = false;
    async function* interleaved() {
      for await (const e of events) {
        seen.push(e);
        yield e;
        // Once the first page of login events is out, erase the user and commit.
        if (!forgot && e.kind === 'batch' && e.category === 'login_events') {
          forgot = true;
          await engine.forgetUser(platform, { userId: 'user-id-123', reason: 'GDPR Right to be Forgotten', idempotencyKey: 'mid-export' });
        }
      }
    }
    const { doc } = await collectExport(interleaved());
    expect(forgot).toBe(true);
    expect(seen.filter((e) => e.kind === 'batch' && e.category === 'login_events').length).toBeGreaterThan(5);
    const d = doc as { email: string; login_events: Array<{ ip_address: string; user_agent: string }>; passkeys: unknown[]; oauth_identities: unknown[] };
    expect(d.email).toBe('user@example.com');
    expect(d.login_events).toHaveLength(50);
    expect(d.login_events.filter((l) => l.ip_address === '0.0.0.0' || l.user_agent === 'anonymized')).toEqual([]);
    expect(d.passkeys).toHaveLength(1);
    expect(d.oauth_identities).toHaveLength(2);
    // …and the forget did commit.
    expect(((await db.knex('users').where({ id: 'user-id-123' }).first()) as { email: string }).email).toMatch(/@deleted\.local$/);
  });

  it('stops the query when the caller cancels, records the export as failed and leaves no open transaction', async () => {
    const abort = new AbortController();
    const events = slowEngine.exportUser(platform, { userId: 'user-id-123', reason: '' }, abort.signal);
    let requestId = '';
    let batches = 0;
    const run = (async () => {
      for await (const e of events) {
        if (e.kind === 'header') requestId = e.requestId;
        if (e.kind === 'batch' && ++batches === 3) abort.abort();
      }
    })();
    await expect(run).rejects.toBeInstanceOf(CancelledError);
    expect(batches).toBe(3);
    const r = await engine.getRequest(platform, requestId);
    expect(r.state).toBe('failed');
    expect(r.error).toBe('The export was cancelled');
    // Audited as cancelled, never as a disclosure.
    expect(
      await db
        .knex('audit_log')
        .where('details', '@>', JSON.stringify({ request_id: requestId }))
        .pluck('event_type'),
    ).toEqual(['user_data_export_cancelled']);
    const open = await db.knex.raw(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`);
    expect((open as { rows: Array<{ n: number }> }).rows[0]?.n).toBe(0);
  });

  it('stops the query when the consumer stops reading (a cancelled gRPC stream)', async () => {
    const events = slowEngine.exportUser(platform, { userId: 'user-id-123', reason: '' }, new AbortController().signal);
    let requestId = '';
    for await (const e of events) {
      if (e.kind === 'header') requestId = e.requestId;
      if (e.kind === 'batch') break; // return() on the generator, as nice-grpc does on cancel
    }
    const r = await engine.getRequest(platform, requestId);
    expect(r).toMatchObject({ state: 'failed', error: 'The export was interrupted before it finished' });
    expect(
      await db
        .knex('audit_log')
        .where('details', '@>', JSON.stringify({ request_id: requestId }))
        .pluck('event_type'),
    ).toEqual(['user_data_export_cancelled']);
    const open = await db.knex.raw(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`);
    expect((open as { rows: Array<{ n: number }> }).rows[0]?.n).toBe(0);
  });
});
