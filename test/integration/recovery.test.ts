import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { connectPrivacyService } from '../../src/client/privacy-client.js';
import { RequestState } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { openDatabase } from '../../src/store/database.js';
import { startTestServer } from '../support/server-fixture.js';
import { type LetheProcess, startLetheProcess } from '../support/lethe-process.js';
import { type PostgresCluster, requirePostgres, startPostgres, sqlOn } from '../support/postgres.js';

/**
 * Crash recovery of the ledger: a request whose server died (kill -9) does not stay `running`.
 * Another replica marks it failed ("interrupted") once the dead one's heartbeat is stale, and a
 * retry with the same idempotency key runs it again.
 */

const INTERRUPTED = /^interrupted: the server carrying it out stopped/;
const pgBin = requirePostgres();

type Replica = LetheProcess;

describe.runIf(pgBin !== undefined)('requests interrupted by a crash (PostgreSQL, two replicas)', () => {
  let cluster: PostgresCluster;
  let url: string;
  let dataDir: string;
  const artifactKey = randomBytes(32).toString('hex');
  const replicas: Replica[] = [];

  async function startReplica(): Promise<Replica> {
    const r = await startLetheProcess({ dataDir, env: { DATABASE_URL: url, LETHE_ARTIFACT_KEY: artifactKey } });
    replicas.push(r);
    return r;
  }

  const sql = sqlOn(() => url);

  beforeAll(async () => {
    cluster = await startPostgres(pgBin ?? '');
    url = await cluster.createDatabase();
    dataDir = mkdtempSync(join(tmpdir(), 'lethe-recovery-'));
  });
  afterAll(async () => {
    for (const r of replicas) if (r.process.exitCode === null) r.process.kill('SIGKILL');
    await cluster?.destroy();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('a replica fails the export a killed one left running, and the retried StoreExport runs again', async () => {
    const a = await startReplica();
    const b = await startReplica();
    const token = await mintLocalToken(dataDir, 'platform-owner-id', 300);
    const onA = connectPrivacyService(a.address, token);

    // Hold the exports inside their snapshot: a lock the test keeps on a table they read.
    const blocker = new pg.Client({ connectionString: url });
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE login_events IN ACCESS EXCLUSIVE MODE');
    const key = `recovery-${randomUUID()}`;
    const stored = onA.client.storeExport({ userId: 'user-id-123', reason: '', idempotencyKey: key, requestedBy: '' }).catch((err: unknown) => err);
    const streamed = (async () => {
      for await (const _ of onA.client.exportUser({ userId: 'member-user-id-456', reason: '' })) {
        // nothing: the server dies first
      }
    })().catch((err: unknown) => err);
    const running = await vi.waitFor(
      async () => {
        const rows = await sql<{ id: string; idempotency_key: string | null }>(
          `SELECT id, idempotency_key FROM lethe_privacy_requests WHERE state = 'running'`,
        );
        expect(rows).toHaveLength(2);
        return rows;
      },
      { timeout: 20_000, interval: 100 },
    );

    // Both exports wait for login_events (the StoreExport has cleared its earlier chunks by then).
    await vi.waitFor(
      async () => {
        // (pg_stat_activity's text of the export's first statement is cut before it names the table.)
        const waiting = await sql(`SELECT pid FROM pg_locks WHERE relation = 'login_events'::regclass AND NOT granted`);
        expect(waiting).toHaveLength(2);
      },
      { timeout: 20_000, interval: 100 },
    );
    // What a StoreExport has committed when it dies: chunks, sealed with a key stored nowhere.
    const storing = running.find((r) => r.idempotency_key === key)?.id;
    await sql(`INSERT INTO lethe_export_artifact_chunks (request_id, seq, nonce, tag, ciphertext) VALUES ($1, 0, '\\x00', '\\x00', '\\x00')`, [storing]);
    a.process.kill('SIGKILL');
    const killedAt = Date.now();
    await blocker.query('ROLLBACK');
    await blocker.end();
    await stored;
    await streamed;
    onA.close();

    const failed = await vi.waitFor(
      async () => {
        const rows = await sql<{ id: string; state: string; error: string | null }>(
          `SELECT id, state, error FROM lethe_privacy_requests WHERE id = ANY($1) ORDER BY id`,
          [running.map((r) => r.id)],
        );
        expect(rows.map((r) => r.state)).toEqual(['failed', 'failed']);
        return rows;
      },
      { timeout: 40_000, interval: 250 },
    );
    const recoveredInMs = Date.now() - killedAt;
    expect(recoveredInMs).toBeLessThan(30_000);
    console.info(`recovery: the surviving replica failed the interrupted requests ${recoveredInMs} ms after the kill`);
    for (const r of failed) expect(r.error).toMatch(INTERRUPTED);
    expect(await sql(`SELECT seq FROM lethe_export_artifact_chunks WHERE request_id = $1`, [storing])).toEqual([]);
    const audits = await sql<{ event_type: string }>(`SELECT event_type FROM audit_log WHERE details->>'request_id' = ANY($1)`, [running.map((r) => r.id)]);
    expect(audits.map((x) => x.event_type)).toEqual(['user_data_export_failed', 'user_data_export_failed']);

    // Retried with the same key on the surviving replica: runs again under the same request id.
    const onB = connectPrivacyService(b.address, token);
    try {
      const again = await onB.client.storeExport({ userId: 'user-id-123', reason: '', idempotencyKey: key, requestedBy: '' });
      expect(again.replayed).toBe(false);
      expect(again.requestId).toBe(running.find((r) => r.idempotency_key === key)?.id);
      expect((await onB.client.getPrivacyRequest({ id: again.requestId })).request?.state).toBe(RequestState.REQUEST_STATE_COMPLETED);
    } finally {
      onB.close();
    }
  });
});

describe('requests interrupted by a crash (embedded PGlite)', () => {
  it('are failed as soon as the server starts again: one process owns the embedded database', async () => {
    const first = await startTestServer({});
    const dataDir = first.dataDir;
    // Stop without removing the data directory, as a crash would leave it.
    await first.server.stop(1_000);
    const db = await openDatabase({ kind: 'pglite', dataDir: join(dataDir, 'pgdata') });
    const id = randomUUID();
    await db.knex('lethe_privacy_requests').insert({
      id,
      type: 'export',
      subject_id: 'user-id-123',
      requester: 'user-id-123',
      reason: '',
      state: 'running',
      received_at: new Date(),
      due_at: new Date(),
      worker_id: randomUUID(),
    });
    await db.close();
    const { loadServerConfig } = await import('../../src/config/config.js');
    const { startLetheServer } = await import('../../src/server/lethe-server.js');
    const { silentLogger } = await import('../support/engine-fixture.js');
    const again = await startLetheServer(
      loadServerConfig({ LETHE_LOG_LEVEL: 'silent' }, { demo: true, listen: '127.0.0.1:0', httpListen: '127.0.0.1:0', dataDir }),
      silentLogger,
    );
    try {
      const check = await openStateReader(again, dataDir);
      await vi.waitFor(
        async () => expect(await check(id)).toMatchObject({ state: RequestState.REQUEST_STATE_FAILED, error: expect.stringMatching(INTERRUPTED) as string }),
        {
          timeout: 10_000,
          interval: 100,
        },
      );
    } finally {
      await again.stop(1_000);
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

/** Reads a request through the API (the embedded database has one connection: the server's). */
async function openStateReader(server: { port: number }, dataDir: string) {
  const token = await mintLocalToken(dataDir, 'platform-owner-id', 300);
  return async (id: string) => {
    const { client, close } = connectPrivacyService(`127.0.0.1:${server.port}`, token);
    try {
      return (await client.getPrivacyRequest({ id })).request;
    } finally {
      close();
    }
  };
}
