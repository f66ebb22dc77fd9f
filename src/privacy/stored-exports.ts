import type { Knex } from 'knex';
import { DataLossError, FailedPreconditionError, InvalidArgumentError, type LetheError, NotFoundError } from '../errors.js';
import { type LockConnection, withAdvisoryLock } from '../store/advisory-lock.js';
import { type ArtifactRecord, artifacts } from '../store/artifacts.js';
import { type PrivacyRequestRecord, ledger } from '../store/ledger.js';
import { snapshotTransaction } from '../store/export-session.js';
import { queriesOf, rowsOf } from '../store/session.js';
import { type ArtifactCipher, WRONG_ARTIFACT_KEY } from './artifact-cipher.js';
import { writeAudit } from './audit.js';
import { ARTIFACT_KEY_ERASED, ArtifactWriter, readArtifact } from './export-artifacts.js';
import { subjectLockKey } from './locks.js';
import type { Principal } from './principal.js';
import { checkReason, optionalId, requireId } from './validation.js';
import {
  ARTIFACT_READ_AUDIT,
  type ArtifactOptions,
  type ArtifactView,
  auditDetails,
  type EngineOptions,
  EnginePart,
  EXPORT_AUDIT,
  failureOutcome,
  idempotencyLock,
  KEY_REUSED,
  type Outcome,
  REQUEST_NOT_FOUND,
  unavailableArtifact,
  UUID,
  finishExport,
} from './engine-part.js';
import { DEFAULT_EXPORT_REASON, type ExportEvent, type ExportService } from './export-service.js';

export const NO_ARTIFACT = 'Privacy request has no export artifact (only exports made with StoreExport are stored)';

export interface StoredExport {
  readonly requestId: string;
  readonly artifact: ArtifactView;
  readonly replayed: boolean;
}

export type ArtifactPart = { readonly kind: 'artifact'; readonly artifact: ArtifactView } | { readonly kind: 'chunk'; readonly bytes: Buffer };

/** StoreExport and GetExportArtifact: exports kept encrypted at rest, each with its own data key. */
export class StoredExports extends EnginePart {
  constructor(
    opts: EngineOptions,
    private readonly exports: ExportService,
  ) {
    super(opts);
  }

  /**
   * Runs an export on the server and stores the document encrypted (StoreExport). Calls with
   * one idempotency key are serialized by a lock on the key that holds across replicas. A key
   * whose artifact is stored replays it; a key whose earlier attempt never finished (the caller
   * or a server died) runs the export again under the same request id. The chunks, the
   * artifact's description and the ledger's `completed` commit together, so an attempt that
   * dies leaves nothing half-written.
   */
  async storeExport(
    actor: Principal,
    input: { userId: string; reason: string; idempotencyKey: string; requestedBy?: string },
    signal: AbortSignal,
  ): Promise<StoredExport> {
    const userId = requireId(input.userId, 'user_id');
    const reason = checkReason(input.reason, { required: false }) || DEFAULT_EXPORT_REASON;
    const key = requireId(input.idempotencyKey, 'idempotency_key');
    const requestedBy = optionalId(input.requestedBy ?? '', 'requested_by');
    this.artifactOptions();

    const release = this.exports.takeExportSlot();
    try {
      return await this.storeExportLocked(actor, { userId, reason, key, requestedBy }, signal);
    } finally {
      release();
    }
  }

  /**
   * On PostgreSQL a call holds two pooled connections: the key's lock (a session-level lock,
   * which also does the small reads and writes the chunks, each in a short transaction of its
   * own) and the snapshot, only while the server's own categories are read.
   */
  private async storeExportLocked(
    actor: Principal,
    { userId, reason, key, requestedBy }: { userId: string; reason: string; key: string; requestedBy: string | undefined },
    signal: AbortSignal,
  ): Promise<StoredExport> {
    return this.db(() =>
      withAdvisoryLock(
        this.knex,
        idempotencyLock(key),
        async (lock) => {
          const onLock = <T>(fn: (db: Knex | Knex.Transaction) => Promise<T>): Promise<T> => (lock === undefined ? fn(this.knex) : lock.transaction(fn));
          const found = await onLock(async (db) => {
            const prior = await ledger.byIdempotencyKey(db, key);
            if (prior !== undefined) {
              if (prior.type !== 'export' || prior.subjectId !== userId || prior.requester !== actor.id) throw new FailedPreconditionError(KEY_REUSED);
              const stored = await artifacts.get(db, prior.id);
              // Never the old bytes of a forgotten subject, nor a description that promises them.
              if (stored?.state === 'erased') throw new FailedPreconditionError(ARTIFACT_KEY_ERASED);
              if (stored !== undefined) return { prior, replay: { requestId: prior.id, artifact: this.artifactView(stored, this.now()), replayed: true } };
            }
            await this.exports.authorizeExportOf(actor, userId, rowsOf(db));
            return { prior, replay: undefined };
          });
          if (found.replay !== undefined) return found.replay;
          const { prior } = found;
          let request: PrivacyRequestRecord;
          if (prior === undefined) {
            request = await this.exports.recordExport(actor, userId, reason, key, requestedBy);
          } else {
            request = prior;
            await ledger.restart(this.knex, prior.id, this.opts.workerId);
          }
          const requestId = request.id;
          // A forget of this subject waits until the artifact is stored, then erases it; a forget
          // that came first is in the snapshot. (PGlite's single connection serializes them anyway.)
          await lock?.shareLock(subjectLockKey(userId));
          const artifact = await this.exportToArtifact(request, lock, signal);
          this.opts.logger.info(
            { requestId, subjectId: userId, actor: actor.id, sizeBytes: artifact.sizeBytes, rerun: prior !== undefined },
            'export artifact stored',
          );
          return { requestId, artifact, replayed: false };
        },
        signal,
      ),
    );
  }

  /**
   * The export, written encrypted as it is assembled.
   *
   * On PostgreSQL no transaction waits on the downstream services: the snapshot ends once the
   * server's own categories are read, and each chunk is committed as it is written, on the lock's
   * connection (the snapshot's is busy streaming rows with COPY). The chunks are sealed with a
   * data key that exists only in this process until the last transaction stores it (wrapped)
   * together with the description, the ledger's `completed` and the audit entry: an attempt that
   * dies leaves ciphertext nobody can decrypt and no artifact; its chunks are deleted when it
   * fails, when the next attempt starts, when the replica's death is noticed, or by a forget.
   *
   * Embedded PGlite has a single connection, which the snapshot holds: there everything goes
   * into the snapshot's own transaction, committed at the end (there is no other connection for
   * a forget to slip in on, nor a server to time an idle transaction out).
   */
  private async exportToArtifact(request: PrivacyRequestRecord, lock: LockConnection | undefined, signal: AbortSignal): Promise<ArtifactRecord> {
    const { cipher, ttlMs, chunkBytes } = this.artifactOptions();
    const { id: requestId, subjectId: userId } = request;
    // Everything the export reads comes from this snapshot.
    const snapshot = await snapshotTransaction(this.knex, { readOnly: lock !== undefined });
    const write = <T>(fn: (trx: Knex.Transaction) => Promise<T>): Promise<T> => (lock === undefined ? fn(snapshot) : lock.transaction(fn));
    let outcome: Outcome = { kind: 'failed', error: 'The export was interrupted before it was stored' };
    try {
      await write((trx) => artifacts.deleteChunks(trx, requestId));
      const dataKey = cipher.newDataKey(requestId);
      const writer = new ArtifactWriter(dataKey.cipher, requestId, (chunk) => write((trx) => artifacts.insertChunk(trx, requestId, chunk)), chunkBytes);
      let trailer: Extract<ExportEvent, { kind: 'trailer' }> | undefined;
      const endSnapshot = async () => {
        if (lock !== undefined) await snapshot.commit();
      };
      for await (const event of this.exports.readSnapshot(queriesOf(snapshot), userId, requestId, signal, { endSnapshot, sink: writer.sink })) {
        if (event.kind === 'trailer') trailer = event;
        await writer.flush();
      }
      if (trailer === undefined) throw new Error('the export ended without a trailer');
      const { sizeBytes, chunkCount } = await writer.finish();
      const at = this.now();
      const stored = trailer;
      const artifact = await write(async (trx) => {
        await artifacts.insertKey(trx, requestId, dataKey.wrapped);
        const a = await artifacts.insert(trx, {
          requestId,
          keyId: cipher.keyId,
          sha256: stored.sha256,
          sizeBytes,
          chunkCount,
          counts: [...stored.counts].map(([category, exported]) => ({ category, exported })),
          totalRecords: stored.totalRecords,
          createdAt: at,
          expiresAt: new Date(at.getTime() + ttlMs),
        });
        await finishExport(trx, requestId, at, stored.downstream);
        await writeAudit(trx, this.map, {
          eventType: 'user_data_export_stored',
          actorId: request.requester,
          targetId: userId,
          details: auditDetails(request),
          timestamp: at,
        });
        return a;
      });
      if (lock === undefined) await snapshot.commit();
      outcome = { kind: 'delivered' };
      return artifact;
    } catch (err) {
      const failed = failureOutcome(err, signal, 'The export failed');
      outcome = failed;
      throw failed.thrown;
    } finally {
      if (!snapshot.isCompleted()) await snapshot.rollback().catch(() => undefined);
      if (outcome.kind !== 'delivered') {
        // The chunks committed so far: undecryptable without the key, deleted all the same.
        if (lock !== undefined) await lock.transaction((trx) => artifacts.deleteChunks(trx, requestId)).catch(() => undefined);
        // The ledger and the audit keep the failure.
        await this.recordOutcome(request, outcome, EXPORT_AUDIT);
      }
    }
  }

  /**
   * Streams a stored export (GetExportArtifact): its description, then the decrypted document
   * in order, checked against the description's size and SHA-256 before its last bytes go out.
   * Readable by whoever may read the request in the ledger.
   */
  async *exportArtifact(actor: Principal, requestId: string, signal: AbortSignal): AsyncGenerator<ArtifactPart> {
    if (!UUID.test(requestId)) throw new InvalidArgumentError('request_id must be a privacy request id (a UUID)');
    const { cipher, readChunks } = this.artifactOptions();
    const r = await this.db(() => ledger.get(this.knex, requestId));
    if (r === undefined || !(await this.mayRead(actor, r))) throw new NotFoundError(REQUEST_NOT_FOUND);
    const stored = r.artifact;
    if (stored === null) throw missingArtifact(r);
    const artifact = this.artifactView(stored, this.now());
    if (artifact.state !== 'available') throw unavailableArtifact(artifact);
    if (artifact.keyId !== cipher.keyId) {
      this.opts.logger.warn({ requestId, storedKeyId: artifact.keyId, keyId: cipher.keyId }, 'export artifact was stored with another LETHE_ARTIFACT_KEY');
      throw new FailedPreconditionError(WRONG_ARTIFACT_KEY);
    }
    const dataCipher = artifact.keyScheme === 'master' ? cipher : await this.dataKeyOf(artifact, cipher);
    yield { kind: 'artifact', artifact };
    let outcome: Outcome = { kind: 'cancelled', error: 'The download was interrupted' };
    try {
      for await (const bytes of readArtifact(dataCipher, artifact, artifacts.chunks(this.knex, requestId, readChunks ?? 4, signal)))
        yield { kind: 'chunk', bytes };
      outcome = { kind: 'delivered' };
    } catch (err) {
      // The sweeper or a forget may have deleted the chunks while they were read.
      const now = await this.db(() => artifacts.get(this.knex, requestId));
      const gone = now === undefined ? undefined : this.artifactView(now, this.now());
      const failed = failureOutcome(gone !== undefined && gone.state !== 'available' ? unavailableArtifact(gone) : err, signal, 'The download failed');
      outcome = failed;
      throw failed.thrown;
    } finally {
      await this.recordOutcome(r, outcome, ARTIFACT_READ_AUDIT, { ledgerToo: false });
    }
  }

  /** The artifact's own key; gone when a forget destroyed it between the two reads. */
  private async dataKeyOf(artifact: ArtifactView, cipher: ArtifactCipher): Promise<ArtifactCipher> {
    const wrapped = await this.db(() => artifacts.key(this.knex, artifact.requestId));
    if (wrapped !== undefined) return cipher.openDataKey(artifact.requestId, wrapped);
    const now = await this.db(() => artifacts.get(this.knex, artifact.requestId));
    if (now !== undefined && now.state !== 'available') throw unavailableArtifact(now);
    throw new DataLossError('Export artifact is damaged (its data key is missing); run the export again');
  }

  /** Deletes the chunks of every artifact past its expiry and marks it expired; returns how many. */
  async expireArtifacts(): Promise<number> {
    let expired = 0;
    for (;;) {
      const ids = await this.db(() => artifacts.expireDue(this.knex, this.now(), 100));
      expired += ids.length;
      if (ids.length < 100) return expired;
    }
  }

  private artifactOptions(): ArtifactOptions {
    if (this.opts.artifacts === undefined) throw new FailedPreconditionError('This server does not store export artifacts');
    return this.opts.artifacts;
  }
}

/** Why a request the caller may read has no artifact to fetch. */
function missingArtifact(r: PrivacyRequestRecord): LetheError {
  const stored = r.type === 'export' && r.idempotencyKey !== null;
  if (!stored) return new NotFoundError(NO_ARTIFACT);
  if (r.state === 'running') return new FailedPreconditionError('The export is still running; fetch the artifact once the request is completed');
  return new FailedPreconditionError('The export stored no artifact; call StoreExport again with the same idempotency key');
}
