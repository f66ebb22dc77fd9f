import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { receiveArtifact } from '../../src/client/artifact-receiver.js';
import { receiveExport } from '../../src/client/export-receiver.js';
import type { PrivacyClient } from '../../src/client/privacy-client.js';
import { ArtifactState, type ExportArtifact } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { WRONG_ARTIFACT_KEY } from '../../src/privacy/artifact-cipher.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { status } from '../support/grpc-status.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { waitFor } from '../support/streams.js';

/**
 * StoreExport and GetExportArtifact over gRPC, on PostgreSQL with the whole server in-process,
 * and `lethe export --request` (the built bin/lethe.js, run as a child process).
 */

const bin = requirePostgres();
const OPERATOR = 'privacy-bot';
const LETHE = join(process.cwd(), 'bin', 'lethe.js');
const run = promisify(execFile);
let keySeq = 0;
const key = () => `artifact-key-${++keySeq}`;

async function fetch(client: PrivacyClient, requestId: string): Promise<{ artifact: ExportArtifact; bytes: Buffer }> {
  const chunks: Buffer[] = [];
  const artifact = await receiveArtifact(client.getExportArtifact({ requestId }), (c) => void chunks.push(Buffer.from(c)));
  return { artifact, bytes: Buffer.concat(chunks) };
}

describe.runIf(bin !== undefined)('export artifacts over gRPC on PostgreSQL', () => {
  let cluster: PostgresCluster;
  let url: string;
  let t: TestServer;
  const artifactKey = randomBytes(32).toString('hex');
  const as = (id: string) => t.clientAs(id);
  const sql = async <T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return (await c.query<T>(text, values)).rows;
    } finally {
      await c.end();
    }
  };

  beforeAll(async () => {
    cluster = await startPostgres(bin ?? '');
    url = await cluster.createDatabase();
    t = await startTestServer({ DATABASE_URL: url, LETHE_PLATFORM_PRINCIPALS: OPERATOR, LETHE_ARTIFACT_KEY: artifactKey, LETHE_ARTIFACT_SWEEP_INTERVAL: '1s' });
  });
  afterAll(async () => {
    await t?.stop();
    await cluster?.destroy();
  });

  describe('StoreExport authorization (the export rules)', () => {
    it.each([
      ['user-id-123', 'user-id-123', 'OK', ''],
      ['owner-user-id-1', 'member-user-id-456', 'OK', ''],
      ['platform-owner-id', 'owner-user-id-2', 'OK', ''],
      [OPERATOR, 'member-user-id-456', 'OK', ''],
      ['member-user-id-456', 'user-id-123', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['owner-user-id-1', 'platform-owner-id', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['untrusted-bot', 'member-user-id-456', 'PERMISSION_DENIED', "You do not have permission to export this user's data"],
      ['platform-owner-id', 'no-such-user', 'NOT_FOUND', 'User not found'],
    ])('%s storing an export of %s → %s', async (actor, subject, code, details) => {
      expect(await status((await as(actor)).storeExport({ userId: subject, reason: '', idempotencyKey: key() }))).toEqual({ code, details });
    });

    it('refuses bad arguments and a reused key', async () => {
      const client = await as(OPERATOR);
      expect(await status(client.storeExport({ userId: 'user-id-123', reason: '', idempotencyKey: '' }))).toEqual({
        code: 'INVALID_ARGUMENT',
        details: 'idempotency_key is required',
      });
      expect(await status(client.storeExport({ userId: '', reason: '', idempotencyKey: key() }))).toEqual({
        code: 'INVALID_ARGUMENT',
        details: 'user_id is required',
      });
      const k = key();
      await client.storeExport({ userId: 'user-id-123', reason: '', idempotencyKey: k });
      expect(await status(client.storeExport({ userId: 'member-user-id-456', reason: '', idempotencyKey: k }))).toEqual({
        code: 'FAILED_PRECONDITION',
        details: 'idempotency_key was already used for a different request; use a new key',
      });
    });
  });

  describe('a stored export', () => {
    let stored: { requestId: string; artifact: ExportArtifact };

    beforeAll(async () => {
      const r = await (await as(OPERATOR)).storeExport({ userId: 'member-user-id-456', reason: 'PrivacyRequest default/dsar-1', idempotencyKey: 'uid-dsar-1' });
      if (r.artifact === undefined) throw new Error('no artifact in the response');
      stored = { requestId: r.requestId, artifact: r.artifact };
    });

    it('streams the description, then bytes whose SHA-256 is the description’s and the ExportUser trailer’s', async () => {
      const client = await as(OPERATOR);
      const messages: string[] = [];
      const chunks: Buffer[] = [];
      for await (const m of client.getExportArtifact({ requestId: stored.requestId })) {
        messages.push(m.part?.$case ?? 'empty');
        if (m.part?.$case === 'chunk') chunks.push(Buffer.from(m.part.value));
      }
      expect(messages[0]).toBe('artifact');
      expect(messages.slice(1).every((m) => m === 'chunk') && messages.length > 1).toBe(true);
      const bytes = Buffer.concat(chunks);
      expect(bytes.length).toBe(stored.artifact.sizeBytes);
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(stored.artifact.sha256);
      const trailer = await receiveExport(client.exportUser({ userId: 'member-user-id-456', reason: '' }), () => undefined);
      expect(trailer.trailer.sha256).toBe(stored.artifact.sha256);
      expect(stored.artifact).toMatchObject({ requestId: stored.requestId, state: ArtifactState.ARTIFACT_STATE_AVAILABLE, totalRecords: trailer.records });
      expect(stored.artifact.counts).toEqual(trailer.trailer.counts);
    });

    it('replays a retried call', async () => {
      const again = await (
        await as(OPERATOR)
      ).storeExport({ userId: 'member-user-id-456', reason: 'PrivacyRequest default/dsar-1', idempotencyKey: 'uid-dsar-1' });
      expect(again).toEqual({ requestId: stored.requestId, artifact: stored.artifact, replayed: true });
    });

    it('is fetched by the requester, the subject and platform owners; anyone else gets NOT_FOUND', async () => {
      for (const actor of [OPERATOR, 'member-user-id-456', 'platform-owner-id']) {
        expect((await fetch(await as(actor), stored.requestId)).artifact.sha256).toBe(stored.artifact.sha256);
      }
      for (const actor of ['owner-user-id-1', 'user-id-123', 'untrusted-bot']) {
        expect(await status(fetch(await as(actor), stored.requestId))).toEqual({ code: 'NOT_FOUND', details: 'Privacy request not found' });
      }
      expect(await status(fetch(await as(OPERATOR), 'dsar-1'))).toEqual({
        code: 'INVALID_ARGUMENT',
        details: 'request_id must be a privacy request id (a UUID)',
      });
    });

    it('shows in the ledger with its artifact', async () => {
      const { request } = await (await as(OPERATOR)).getPrivacyRequest({ id: stored.requestId });
      expect(request?.artifact).toEqual(stored.artifact);
      const list = await (
        await as('platform-owner-id')
      ).listPrivacyRequests({ subjectId: 'member-user-id-456', state: 0, overdueOnly: false, pageSize: 0, pageToken: '' });
      expect(list.requests.find((q) => q.id === stored.requestId)?.artifact?.sha256).toBe(stored.artifact.sha256);
    });

    it('`lethe export --request` writes a file whose SHA-256 is the artifact’s', async () => {
      expect(existsSync(join(process.cwd(), 'dist', 'cli', 'main.js'))).toBe(true);
      const out = join(t.dataDir, 'dsar-1.json');
      const cli = (...args: string[]) =>
        run('node', [LETHE, 'export', ...args, '--server', t.address, '--data-dir', t.dataDir, '--as', OPERATOR], { encoding: 'utf8' }).then(
          (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
          (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
        );
      const r = await cli('--request', stored.requestId, '-o', out);
      expect(r.code).toBe(0);
      const digest = /sha256 ([0-9a-f]{64}) \(verified\)/.exec(r.stderr)?.[1];
      expect(digest).toBe(stored.artifact.sha256);
      expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(stored.artifact.sha256);
      expect(existsSync(`${out}.partial`)).toBe(false);

      expect(await cli('member-user-id-456', '--request', stored.requestId)).toMatchObject({
        code: 1,
        stderr: 'lethe: give either a <user-id> to export or --request <id> to fetch a stored export, not both\n',
      });
      expect(await cli()).toMatchObject({ code: 1, stderr: 'lethe: give the <user-id> to export, or --request <id> to fetch a stored export\n' });
      const denied = await run('node', [
        LETHE,
        'export',
        '--request',
        stored.requestId,
        '-o',
        join(t.dataDir, 'x.json'),
        '--server',
        t.address,
        '--data-dir',
        t.dataDir,
        '--as',
        'user-id-123',
      ]).catch((e: { code: number; stderr: string }) => e);
      expect(denied).toMatchObject({ code: 1, stderr: 'lethe: NOT_FOUND: Privacy request not found\n' });
      expect(existsSync(join(t.dataDir, 'x.json.partial'))).toBe(false);
    });

    it('is refused by a server with another LETHE_ARTIFACT_KEY', async () => {
      const other = await startTestServer({ DATABASE_URL: url, LETHE_PLATFORM_PRINCIPALS: OPERATOR, LETHE_ARTIFACT_KEY: randomBytes(32).toString('hex') });
      try {
        expect(await status(fetch(await other.clientAs(OPERATOR), stored.requestId))).toEqual({ code: 'FAILED_PRECONDITION', details: WRONG_ARTIFACT_KEY });
      } finally {
        await other.stop();
      }
    });

    it('expires: the server’s sweeper deletes the chunks, the ledger says so, fetching is refused', async () => {
      const client = await as(OPERATOR);
      const r = await client.storeExport({ userId: 'user-id-123', reason: '', idempotencyKey: key() });
      const expiredAt = new Date(Date.now() - 1_000);
      await sql('UPDATE lethe_export_artifacts SET expires_at = $2 WHERE request_id = $1', [r.requestId, expiredAt]);
      await waitFor(
        'the sweeper',
        async () => (await sql<{ n: number }>('SELECT count(*)::int AS n FROM lethe_export_artifact_chunks WHERE request_id = $1', [r.requestId]))[0]?.n === 0,
        15_000,
      );
      expect(await sql('SELECT state FROM lethe_export_artifacts WHERE request_id = $1 AND deleted_at IS NOT NULL', [r.requestId])).toEqual([
        { state: 'expired' },
      ]);
      const { request } = await client.getPrivacyRequest({ id: r.requestId });
      expect(request?.artifact?.state).toBe(ArtifactState.ARTIFACT_STATE_EXPIRED);
      expect(await status(fetch(client, r.requestId))).toEqual({
        code: 'FAILED_PRECONDITION',
        details: `Export artifact expired at ${expiredAt.toISOString()}; run the export again`,
      });
      // The other artifact is still there.
      expect((await fetch(client, stored.requestId)).bytes.length).toBe(stored.artifact.sizeBytes);
    });
  });
});

describe('export artifacts on the embedded default', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({});
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('generates the key in the data directory (0600) and stores and serves exports with it', async () => {
    const path = join(t.dataDir, 'artifact-key');
    expect(readFileSync(path, 'utf8')).toMatch(/^[0-9a-f]{64}\n$/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const client = await t.clientAs('user-id-123');
    const r = await client.storeExport({ userId: 'user-id-123', reason: '', idempotencyKey: 'embedded-1' });
    const { artifact, bytes } = await fetch(client, r.requestId);
    expect(artifact).toEqual(r.artifact);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(artifact.sha256);
  });
});
