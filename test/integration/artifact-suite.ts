import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelledError, DataLossError, FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from '../../src/errors.js';
import { ArtifactCipher, WRONG_ARTIFACT_KEY } from '../../src/privacy/artifact-cipher.js';
import { type ArtifactView, KEY_REUSED, NO_ARTIFACT, type PrivacyEngine, REQUEST_NOT_FOUND } from '../../src/privacy/engine.js';
import type { Principal } from '../../src/privacy/principal.js';
import type { Database } from '../../src/store/database.js';
import { ledger } from '../../src/store/ledger.js';
import { collectExport, demoEngine, never } from '../support/engine-fixture.js';
import { DOCUMENT_KEYS, EXPECTED_NEWEST_LOGIN, EXPECTED_USER_123 } from '../support/expected-export.js';

const user = (id: string): Principal => ({ id, role: 'user' });
const TTL_MS = 7 * 86_400_000;
const EMAIL = 'user@example.com';

async function fetchArtifact(
  engine: PrivacyEngine,
  actor: Principal,
  requestId: string,
): Promise<{ artifact: ArtifactView | undefined; bytes: Buffer; messages: string[] }> {
  let artifact: ArtifactView | undefined;
  const chunks: Buffer[] = [];
  const messages: string[] = [];
  for await (const part of engine.exportArtifact(actor, requestId, never)) {
    messages.push(part.kind);
    if (part.kind === 'artifact') artifact = part.artifact;
    else chunks.push(part.bytes);
  }
  return { artifact, bytes: Buffer.concat(chunks), messages };
}

/**
 * StoreExport and GetExportArtifact in the engine, on a real database. Runs against PostgreSQL
 * and against embedded PGlite, whose single connection changes where the chunks are written.
 */
export function artifactSuite(
  name: string,
  open: () => Promise<Database>,
  options: { close?: () => Promise<void>; openReplica?: () => Promise<Database> } = {},
): void {
  describe(`export artifacts on ${name}`, () => {
    let db: Database;
    let engine: PrivacyEngine;
    const cipher = new ArtifactCipher(randomBytes(32));
    // Several chunks for a ~15 KB document, read two per query.
    const artifactOptions = { cipher, ttlMs: TTL_MS, chunkBytes: 4096, readChunks: 2 };
    const chunkRows = async (requestId: string) =>
      (await db.knex('lethe_export_artifact_chunks').where({ request_id: requestId }).orderBy('seq')) as Array<{
        seq: number;
        nonce: Uint8Array;
        ciphertext: Uint8Array;
      }>;
    const rowsWithKey = async (key: string) =>
      Number(((await db.knex('lethe_privacy_requests').where({ idempotency_key: key }).count('* as n')) as Array<{ n: number | string }>)[0]?.n);

    beforeAll(async () => {
      db = await open();
      engine = await demoEngine(db, { artifacts: artifactOptions });
    });
    afterAll(async () => {
      await db?.close();
      await options.close?.();
    });

    describe('a stored export of user-id-123', () => {
      let stored: Awaited<ReturnType<PrivacyEngine['storeExport']>>;
      let auditsBefore: Record<string, number>;
      const countAudits = async () => {
        const rows = (await db.knex('audit_log').where({ target_id: 'user-id-123' }).groupBy('event_type').select('event_type').count('* as n')) as Array<{
          event_type: string;
          n: number | string;
        }>;
        return Object.fromEntries(rows.map((r) => [r.event_type, Number(r.n)]));
      };

      beforeAll(async () => {
        auditsBefore = await countAudits();
        stored = await engine.storeExport(user('user-id-123'), { userId: 'user-id-123', reason: '', idempotencyKey: 'store-123' }, never);
      });

      it('has the digest the ExportUser trailer gives for the same data, and decrypts to the reference document', async () => {
        const { text, events } = await collectExport(engine.exportUser(user('user-id-123'), { userId: 'user-id-123', reason: '' }, never));
        const trailer = events.at(-1);
        if (trailer?.kind !== 'trailer') throw new Error('no trailer');
        expect(stored.replayed).toBe(false);
        expect(stored.artifact).toMatchObject({
          requestId: stored.requestId,
          sha256: trailer.sha256,
          sizeBytes: Buffer.byteLength(text),
          totalRecords: 59,
          state: 'available',
          keyId: cipher.keyId,
        });
        expect(stored.artifact.counts).toEqual([...trailer.counts].map(([category, exported]) => ({ category, exported })));
        expect(stored.artifact.expiresAt.getTime() - stored.artifact.createdAt.getTime()).toBe(TTL_MS);

        const fetched = await fetchArtifact(engine, user('user-id-123'), stored.requestId);
        expect(fetched.messages[0]).toBe('artifact');
        expect(fetched.messages.slice(1).every((m) => m === 'chunk')).toBe(true);
        expect(fetched.messages.length - 1).toBe(stored.artifact.chunkCount);
        expect(fetched.artifact).toEqual(stored.artifact);
        expect(fetched.bytes.toString('utf8')).toBe(text);
        const doc = JSON.parse(fetched.bytes.toString('utf8')) as Record<string, unknown>;
        expect(Object.keys(doc)).toEqual(DOCUMENT_KEYS);
        const { login_events: logins, ...rest } = doc as { login_events: unknown[] };
        expect(rest).toEqual(EXPECTED_USER_123);
        expect(logins).toHaveLength(50);
        expect(logins[0]).toEqual(EXPECTED_NEWEST_LOGIN);
      });

      it('keeps only ciphertext in the database', async () => {
        const rows = await chunkRows(stored.requestId);
        expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: stored.artifact.chunkCount }, (_, i) => i));
        expect(rows.length).toBeGreaterThan(2);
        const stored_ = Buffer.concat(rows.map((r) => Buffer.from(r.ciphertext)));
        const plain = (await fetchArtifact(engine, user('user-id-123'), stored.requestId)).bytes;
        expect(plain.includes(EMAIL)).toBe(true);
        expect(stored_.includes(EMAIL)).toBe(false);
        expect(stored_.includes('203.0.113.42')).toBe(false);
      });

      it('records a completed export in the ledger with its artifact, and one audit entry', async () => {
        const r = await engine.getRequest(user('user-id-123'), stored.requestId);
        expect(r).toMatchObject({
          type: 'export',
          subjectId: 'user-id-123',
          requester: 'user-id-123',
          state: 'completed',
          idempotencyKey: 'store-123',
          error: null,
        });
        expect(r.artifact).toEqual(stored.artifact);
        // Stored once, delivered once by ExportUser above, and read back twice by the tests above.
        const audits = await countAudits();
        const added = (type: string) => (audits[type] ?? 0) - (auditsBefore[type] ?? 0);
        expect([added('user_data_export_stored'), added('user_data_exported'), added('export_artifact_read')]).toEqual([1, 1, 2]);
        const listed = await engine.listRequests(user('platform-owner-id'), { subjectId: 'user-id-123', overdueOnly: false, pageSize: 50 });
        expect(listed.find((x) => x.id === stored.requestId)?.artifact?.sha256).toBe(stored.artifact.sha256);
        expect(listed.filter((x) => x.id !== stored.requestId).every((x) => x.artifact === null)).toBe(true);
      });

      it('replays a retried call without running the export again', async () => {
        const nonces = (await chunkRows(stored.requestId)).map((r) => Buffer.from(r.nonce).toString('hex'));
        const again = await engine.storeExport(user('user-id-123'), { userId: 'user-id-123', reason: '', idempotencyKey: 'store-123' }, never);
        expect(again).toEqual({ ...stored, replayed: true });
        expect(await rowsWithKey('store-123')).toBe(1);
        expect((await chunkRows(stored.requestId)).map((r) => Buffer.from(r.nonce).toString('hex'))).toEqual(nonces);
      });

      it('refuses the key for a different subject, requester or request type', async () => {
        await expect(
          engine.storeExport(user('platform-owner-id'), { userId: 'member-user-id-456', reason: '', idempotencyKey: 'store-123' }, never),
        ).rejects.toThrow(new FailedPreconditionError(KEY_REUSED));
        await expect(engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'store-123' }, never)).rejects.toThrow(
          new FailedPreconditionError(KEY_REUSED),
        );
        await expect(
          engine.forgetUser(user('platform-owner-id'), { userId: 'member-user-id-456', reason: 'erasure', idempotencyKey: 'store-123' }),
        ).rejects.toThrow(new FailedPreconditionError(KEY_REUSED));
        expect(((await db.knex('users').where({ id: 'member-user-id-456' }).first()) as { email: string }).email).toBe('member@example.com');
        expect(await rowsWithKey('store-123')).toBe(1);
      });

      it('is readable by the requester, the subject and platform principals, and no one else', async () => {
        const other = await engine.storeExport(
          user('owner-user-id-1'),
          { userId: 'member-user-id-456', reason: 'Compliance audit', idempotencyKey: 'store-456' },
          never,
        );
        for (const actor of [
          user('owner-user-id-1'),
          user('member-user-id-456'),
          user('platform-owner-id'),
          { id: 'system:serviceaccount:lethe:lethe-operator', role: 'platform' as const },
        ]) {
          expect((await fetchArtifact(engine, actor, other.requestId)).artifact?.sha256).toBe(other.artifact.sha256);
        }
        for (const actor of [user('user-id-123'), user('owner-user-id-2')]) {
          await expect(fetchArtifact(engine, actor, other.requestId)).rejects.toThrow(new NotFoundError(REQUEST_NOT_FOUND));
        }
      });
    });

    it('refuses what ExportUser refuses, and writes no ledger entry for it', async () => {
      await expect(engine.storeExport(user('member-user-id-456'), { userId: 'user-id-123', reason: '', idempotencyKey: 'denied-1' }, never)).rejects.toThrow(
        new PermissionDeniedError("You do not have permission to export this user's data"),
      );
      await expect(engine.storeExport(user('platform-owner-id'), { userId: 'no-such-user', reason: '', idempotencyKey: 'denied-2' }, never)).rejects.toThrow(
        new NotFoundError('User not found'),
      );
      await expect(engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: '' }, never)).rejects.toThrow(
        new InvalidArgumentError('idempotency_key is required'),
      );
      await expect(engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'has space' }, never)).rejects.toThrow(
        new InvalidArgumentError('idempotency_key must be printable ASCII with no spaces'),
      );
      expect(await rowsWithKey('denied-1')).toBe(0);
      expect(await rowsWithKey('denied-2')).toBe(0);
    });

    it('runs an attempt that died mid-way again, under the same request id', async () => {
      // A running entry with the key and no artifact: the operator or a server died during the export.
      const dead = await ledger.insert(db.knex, {
        type: 'export',
        subjectId: 'user-id-123',
        requester: 'platform-owner-id',
        reason: 'DSAR',
        state: 'running',
        idempotencyKey: 'died-1',
        receivedAt: new Date(),
        dueAt: new Date(Date.now() + 30 * 86_400_000),
      });
      // And a chunk left behind by something that never committed its artifact.
      await db
        .knex('lethe_export_artifact_chunks')
        .insert({ request_id: dead.id, seq: 0, nonce: Buffer.alloc(12), tag: Buffer.alloc(16), ciphertext: Buffer.from('stale') });
      const r = await engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: 'DSAR', idempotencyKey: 'died-1' }, never);
      expect(r).toMatchObject({ requestId: dead.id, replayed: false });
      expect(await rowsWithKey('died-1')).toBe(1);
      expect(await engine.getRequest(user('platform-owner-id'), dead.id)).toMatchObject({ state: 'completed', error: null });
      const { bytes } = await fetchArtifact(engine, user('platform-owner-id'), dead.id);
      expect(JSON.parse(bytes.toString('utf8'))).toMatchObject({ user_id: 'user-id-123', email: EMAIL });
    });

    it('records a failed attempt, refuses to fetch it, and stores on the retry', async () => {
      // The caller cancels once the export has begun (its ledger entry takes the time).
      const cancelled = new AbortController();
      const cancelling = await demoEngine(db, { artifacts: artifactOptions, now: () => (cancelled.abort(), new Date()) });
      await expect(
        cancelling.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'failed-1' }, cancelled.signal),
      ).rejects.toThrow(new CancelledError('The export was cancelled'));
      const failed = await ledger.byIdempotencyKey(db.knex, 'failed-1');
      expect(failed).toMatchObject({ state: 'failed', error: 'The export was cancelled' });
      if (failed === undefined) return;
      expect(await chunkRows(failed.id)).toEqual([]);
      await expect(fetchArtifact(engine, user('platform-owner-id'), failed.id)).rejects.toThrow(
        new FailedPreconditionError('The export stored no artifact; call StoreExport again with the same idempotency key'),
      );
      const retried = await engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'failed-1' }, never);
      expect(retried).toMatchObject({ requestId: failed.id, replayed: false });
      expect((await fetchArtifact(engine, user('platform-owner-id'), failed.id)).bytes.length).toBe(retried.artifact.sizeBytes);
    });

    it('serializes concurrent calls with one key: one export, one ledger entry, one artifact', async () => {
      const call = () => engine.storeExport(user('platform-owner-id'), { userId: 'member-user-id-456', reason: '', idempotencyKey: 'concurrent-1' }, never);
      const results = await Promise.all([call(), call(), call()]);
      expect(results.filter((r) => !r.replayed)).toHaveLength(1);
      expect(new Set(results.map((r) => r.requestId)).size).toBe(1);
      expect(new Set(results.map((r) => r.artifact.sha256)).size).toBe(1);
      expect(await rowsWithKey('concurrent-1')).toBe(1);
      const id = results[0]?.requestId ?? '';
      expect((await chunkRows(id)).length).toBe(results[0]?.artifact.chunkCount);
      expect(JSON.parse((await fetchArtifact(engine, user('platform-owner-id'), id)).bytes.toString('utf8'))).toMatchObject({ user_id: 'member-user-id-456' });
    });

    it('stops waiting for an earlier call with the same key when the caller cancels', async () => {
      const first = engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'waiting-1' }, never);
      const gaveUp = new AbortController();
      const second = engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'waiting-1' }, gaveUp.signal);
      gaveUp.abort();
      await expect(second).rejects.toThrow(new CancelledError('The call was cancelled while it waited for an earlier call with the same key'));
      expect(await first).toMatchObject({ replayed: false });
      expect(await engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'waiting-1' }, never)).toMatchObject({
        replayed: true,
      });
    });

    it.runIf(options.openReplica !== undefined)('serializes calls with one key across replicas (separate pools)', async () => {
      const replicas = await Promise.all([1, 2, 3].map(() => (options.openReplica ?? open)()));
      try {
        const engines = await Promise.all(replicas.map((r) => demoEngine(r, { artifacts: artifactOptions })));
        const results = await Promise.all(
          engines.map((e) => e.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'replicas-1' }, never)),
        );
        expect(results.filter((r) => !r.replayed)).toHaveLength(1);
        expect(new Set(results.map((r) => r.requestId)).size).toBe(1);
        expect(await rowsWithKey('replicas-1')).toBe(1);
        const id = results[0]?.requestId ?? '';
        expect((await chunkRows(id)).length).toBe(results[0]?.artifact.chunkCount);
        expect(JSON.parse((await fetchArtifact(engine, user('platform-owner-id'), id)).bytes.toString('utf8'))).toMatchObject({ user_id: 'user-id-123' });
      } finally {
        await Promise.all(replicas.map((r) => r.close()));
      }
    });

    it('answers requests without an artifact clearly', async () => {
      await expect(fetchArtifact(engine, user('platform-owner-id'), 'not-a-uuid')).rejects.toThrow(
        new InvalidArgumentError('request_id must be a privacy request id (a UUID)'),
      );
      await expect(fetchArtifact(engine, user('platform-owner-id'), '00000000-0000-4000-8000-000000000000')).rejects.toThrow(
        new NotFoundError(REQUEST_NOT_FOUND),
      );
      const { events } = await collectExport(engine.exportUser(user('platform-owner-id'), { userId: 'member-user-id-456', reason: '' }, never));
      const header = events[0];
      if (header?.kind !== 'header') throw new Error('no header');
      await expect(fetchArtifact(engine, user('platform-owner-id'), header.requestId)).rejects.toThrow(new NotFoundError(NO_ARTIFACT));
      const running = await ledger.insert(db.knex, {
        type: 'export',
        subjectId: 'user-id-123',
        requester: 'platform-owner-id',
        reason: '',
        state: 'running',
        idempotencyKey: 'running-1',
        receivedAt: new Date(),
        dueAt: new Date(Date.now() + 30 * 86_400_000),
      });
      await expect(fetchArtifact(engine, user('platform-owner-id'), running.id)).rejects.toThrow(
        new FailedPreconditionError('The export is still running; fetch the artifact once the request is completed'),
      );
    });

    it('refuses an artifact stored with another key, and one whose chunks were altered', async () => {
      const r = await engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'keys-1' }, never);
      const rekeyed = await demoEngine(db, { artifacts: { ...artifactOptions, cipher: new ArtifactCipher(randomBytes(32)) } });
      await expect(fetchArtifact(rekeyed, user('platform-owner-id'), r.requestId)).rejects.toThrow(new FailedPreconditionError(WRONG_ARTIFACT_KEY));

      const [first] = await chunkRows(r.requestId);
      if (first === undefined) throw new Error('no chunks');
      const flipped = Buffer.from(first.ciphertext);
      flipped[3] = (flipped[3] ?? 0) ^ 0xff;
      await db.knex('lethe_export_artifact_chunks').where({ request_id: r.requestId, seq: 0 }).update({ ciphertext: flipped });
      await expect(fetchArtifact(engine, user('platform-owner-id'), r.requestId)).rejects.toThrow(
        new DataLossError('Export artifact is damaged (chunk 0 does not authenticate); run the export again'),
      );
    });

    it('expires: the sweep deletes the chunks, the ledger shows it expired, fetching is refused', async () => {
      const keep = await engine.storeExport(user('platform-owner-id'), { userId: 'member-user-id-456', reason: '', idempotencyKey: 'expiry-keep' }, never);
      const r = await engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'expiry-1' }, never);
      const expiredAt = new Date(Date.now() - 60_000);
      await db.knex('lethe_export_artifacts').where({ request_id: r.requestId }).update({ expires_at: expiredAt });
      const message = `Export artifact expired at ${expiredAt.toISOString()}; run the export again`;

      // Past its expiry, before the sweeper ran: already expired for callers.
      expect((await engine.getRequest(user('platform-owner-id'), r.requestId)).artifact?.state).toBe('expired');
      await expect(fetchArtifact(engine, user('platform-owner-id'), r.requestId)).rejects.toThrow(new FailedPreconditionError(message));

      expect(await engine.expireArtifacts()).toBeGreaterThanOrEqual(1);
      expect(await chunkRows(r.requestId)).toEqual([]);
      const row = (await db.knex('lethe_export_artifacts').where({ request_id: r.requestId }).first()) as {
        state: string;
        deleted_at: Date | null;
        sha256: string;
      };
      expect(row.state).toBe('expired');
      expect(row.deleted_at).not.toBeNull();
      expect(row.sha256).toBe(r.artifact.sha256);
      const view = await engine.getRequest(user('platform-owner-id'), r.requestId);
      expect(view.artifact).toMatchObject({ state: 'expired', sha256: r.artifact.sha256 });
      expect(view.artifact?.deletedAt).toBeInstanceOf(Date);
      await expect(fetchArtifact(engine, user('platform-owner-id'), r.requestId)).rejects.toThrow(new FailedPreconditionError(message));
      expect(await engine.storeExport(user('platform-owner-id'), { userId: 'user-id-123', reason: '', idempotencyKey: 'expiry-1' }, never)).toMatchObject({
        requestId: r.requestId,
        replayed: true,
        artifact: { state: 'expired' },
      });

      // The other artifact is untouched.
      expect((await chunkRows(keep.requestId)).length).toBe(keep.artifact.chunkCount);
      expect((await fetchArtifact(engine, user('platform-owner-id'), keep.requestId)).bytes.length).toBe(keep.artifact.sizeBytes);
      expect(await engine.expireArtifacts()).toBe(0);
    });
  });
}
