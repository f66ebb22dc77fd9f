import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { DataLossError, FailedPreconditionError, InvalidArgumentError, LetheError, NotFoundError, ResourceExhaustedError, USER_NOT_FOUND, errorSummary } from '../errors.js';
import { anonymizedEventFor } from '../events/cloudevents.js';
import { ANONYMIZED_SUBJECT } from '../events/subjects.js';
import { isEmbedded, lockKey, lockKeyShared, withAdvisoryLock } from '../store/advisory-lock.js';
import { type ArtifactRecord, artifacts } from '../store/artifacts.js';
import { translateDatabaseError } from '../store/errors.js';
import { enqueueEvent } from '../store/outbox.js';
import { workers } from '../store/workers.js';
import { type ListFilter, type PrivacyRequestRecord, type RequestState, type TableRows, ledger } from '../store/ledger.js';
import { type ArtifactCipher, WRONG_ARTIFACT_KEY } from './artifact-cipher.js';
import { type AuditEventType, writeAudit } from './audit.js';
import { authorizeExport, authorizeForget } from './authorization.js';
import { type Category, type DataMap, documentKeyOf } from './data-map.js';
import { ARTIFACT_ERASED, ARTIFACT_KEY_ERASED, ArtifactWriter, artifactExpired, readArtifact } from './export-artifacts.js';
import { type DocumentCategory, ExportDocumentAssembler } from './export-document.js';
import { FactsReader } from './facts.js';
import { type ForgetPlan, applyForget } from './forget.js';
import { subjectLockKey } from './locks.js';
import type { Principal } from './principal.js';
import { readJsonRows } from './row-cursor.js';
import { type ColumnTypes, type Fragment, countQuery, exportQuery, subjectColumnsAreText } from './sql.js';
import { checkReason, optionalId, requireId } from './validation.js';

export const FORGET_MESSAGE = 'User data has been anonymized. PII has been removed while preserving audit logs.';
export const REQUEST_NOT_FOUND = 'Privacy request not found';
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const KEY_REUSED = 'idempotency_key was already used for a different request; use a new key';
export const NO_ARTIFACT = 'Privacy request has no export artifact (only exports made with StoreExport are stored)';
const DEFAULT_EXPORT_REASON = 'Data subject access request (GDPR Art. 15)';
// ForgetUser and StoreExport share one key space (the ledger's idempotency_key column).
const idempotencyLock = (key: string): string => `lethe:idempotency:${key}`;

export interface ExportCategoryInfo extends DocumentCategory {
  readonly limit: number;
}

export type ExportEvent =
  | { readonly kind: 'header'; readonly userId: string; readonly requestId: string; readonly generatedAt: Date; readonly categories: readonly ExportCategoryInfo[] }
  | { readonly kind: 'batch'; readonly category: string; readonly records: string[] }
  | { readonly kind: 'trailer'; readonly counts: ReadonlyMap<string, number>; readonly sha256: string; readonly totalRecords: number };

/** An artifact as callers see it: `expired` as soon as its expiry passed, even before the sweeper ran. */
export type ArtifactView = ArtifactRecord;

export interface StoredExport {
  readonly requestId: string;
  readonly artifact: ArtifactView;
  readonly replayed: boolean;
}

export type ArtifactPart = { readonly kind: 'artifact'; readonly artifact: ArtifactView } | { readonly kind: 'chunk'; readonly bytes: Buffer };

export interface ArtifactOptions {
  readonly cipher: ArtifactCipher;
  /** How long a stored export can be fetched. */
  readonly ttlMs: number;
  /** Chunks read per query when an artifact is fetched. */
  readonly readChunks?: number;
  /** Plaintext bytes per chunk (default 256 KiB). */
  readonly chunkBytes?: number;
}

export interface ForgetResult {
  readonly userId: string;
  readonly requestId: string;
  readonly message: string;
  readonly rowsAffected: readonly TableRows[];
  readonly replayed: boolean;
}

export interface EngineOptions {
  readonly knex: Knex;
  readonly dataMap: DataMap;
  readonly columnTypes: ColumnTypes;
  /** The data map's forget and Lethe's own tables', compiled (see prepareServerDataMap). */
  readonly forgetPlan: ForgetPlan;
  readonly logger: Logger;
  /** Rows per cursor fetch during an export. */
  readonly exportFetchRows?: number;
  /** Upper bound on the characters of records in one batch message. */
  readonly exportBatchChars?: number;
  readonly now?: () => Date;
  /** The CloudEvents `source` of anonymization events. */
  readonly eventSource?: string;
  /** Downstream services that must confirm their purge before a forget is completed. */
  readonly expectedServices?: readonly string[];
  /** A forget waiting for confirmations longer than this is overdue (default 7 days). */
  readonly confirmationTimeoutMs?: number;
  /** Called after a forget committed its outbox event, so the relay publishes it at once. */
  readonly onEventEnqueued?: () => void;
  /**
   * Exports (ExportUser, StoreExport) running at once; more are refused at once with
   * RESOURCE_EXHAUSTED, so that exports never take every pooled connection from other calls.
   */
  readonly maxConcurrentExports?: number;
  /** This server replica, named on the requests it runs (see recoverInterrupted). */
  readonly workerId?: string;
  /** Stored exports (StoreExport, GetExportArtifact); unset: those calls fail. */
  readonly artifacts?: ArtifactOptions | undefined;
}

/** A ledger entry as callers see it: with `overdue`, and a pending entry for every expected service not yet heard from. */
export type PrivacyRequestView = PrivacyRequestRecord & { readonly overdue: boolean; readonly pending: readonly string[] };

/** The privacy engine: export, forget and the ledger over one data map. Front ends call only this. */
export class PrivacyEngine {
  private readonly knex: Knex;
  private readonly map: DataMap;
  private readonly facts: FactsReader;
  private readonly now: () => Date;
  private readonly fetchRows: number;
  private readonly batchChars: number;
  private readonly expected: readonly string[];
  private readonly confirmationTimeoutMs: number;
  private exportsRunning = 0;

  constructor(private readonly opts: EngineOptions) {
    this.knex = opts.knex;
    this.map = opts.dataMap;
    this.facts = new FactsReader(opts.dataMap);
    this.now = opts.now ?? (() => new Date());
    this.fetchRows = opts.exportFetchRows ?? 2000;
    this.batchChars = opts.exportBatchChars ?? 128 * 1024;
    this.expected = opts.expectedServices ?? [];
    this.confirmationTimeoutMs = opts.confirmationTimeoutMs ?? 7 * 86_400_000;
  }

  /**
   * Streams the subject's data: a header, batches, a trailer. Everything is read in one
   * REPEATABLE READ snapshot, so a forget committing meanwhile is either wholly visible or not
   * at all. Stopping the iteration (a cancelled call) rolls the snapshot back.
   */
  async *exportUser(actor: Principal, input: { userId: string; reason: string }, signal: AbortSignal): AsyncGenerator<ExportEvent> {
    const userId = requireId(input.userId, 'user_id');
    const reason = checkReason(input.reason, { required: false }) || DEFAULT_EXPORT_REASON;
    const release = this.takeExportSlot();
    try {
      yield* this.exportAuthorized(actor, userId, reason, signal);
    } finally {
      release();
    }
  }

  private async *exportAuthorized(actor: Principal, userId: string, reason: string, signal: AbortSignal): AsyncGenerator<ExportEvent> {
    const request = await this.db(async () => {
      await this.authorizeExportOf(actor, userId);
      return this.recordExport(actor, userId, reason, undefined, undefined);
    });

    // Stays as it is only when the consumer stops iterating (a cancelled call): not delivered.
    let outcome: Outcome = { kind: 'cancelled', error: 'The export was interrupted before it finished' };
    try {
      // The generator resumes after its last yield only once the trailer was handed on: the
      // document was delivered, and only then is the disclosure audited as done.
      yield* this.streamSnapshot(userId, request.id, signal);
      outcome = { kind: 'delivered' };
    } catch (err) {
      const failed = failureOutcome(err, signal, 'The export failed');
      outcome = failed;
      throw failed.thrown;
    } finally {
      await this.recordOutcome(request, outcome, EXPORT_AUDIT);
    }
  }

  /**
   * Closes a request in the ledger and audits how it ended, in one transaction: delivered,
   * cancelled by the caller, or failed. Never throws (the caller's answer is already decided).
   */
  private async recordOutcome(r: PrivacyRequestRecord, outcome: Outcome, events: Readonly<Record<Outcome['kind'], AuditEventType>>, ledgerToo = true): Promise<void> {
    const at = this.now();
    const details = auditDetails(r);
    await this.knex
      .transaction(async (trx) => {
        if (ledgerToo) await ledger.finish(trx, r.id, outcome.kind === 'delivered' ? 'completed' : 'failed', at, outcome.kind === 'delivered' ? undefined : outcome.error);
        await writeAudit(trx, this.map, { eventType: events[outcome.kind], actorId: r.requester, targetId: r.subjectId, details, timestamp: at });
      })
      .catch((err: unknown) => {
        this.opts.logger.warn({ requestId: r.id, err: errorSummary(err) }, 'could not record the outcome of a request');
      });
  }

  /**
   * The rules first, then existence: a caller who could not export the subject if it existed
   * gets the same answer whether or not it exists (a missing subject has no memberships).
   */
  private async authorizeExportOf(actor: Principal, userId: string, db: Knex | Knex.Transaction = this.knex): Promise<void> {
    authorizeExport(actor, userId, await this.facts.subject(db, userId), await this.facts.actor(db, actor.id));
    if (!(await this.facts.subjectExists(db, userId))) throw new NotFoundError(USER_NOT_FOUND);
  }

  /** One of the export slots, or RESOURCE_EXHAUSTED at once; the returned function gives it back. */
  private takeExportSlot(): () => void {
    const max = this.opts.maxConcurrentExports ?? Number.POSITIVE_INFINITY;
    if (this.exportsRunning >= max) {
      throw new ResourceExhaustedError(`${max} exports are already running on this server; retry in a few seconds`);
    }
    this.exportsRunning += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.exportsRunning -= 1;
    };
  }

  /** The export's ledger entry (running), committed before the export reads anything; audited when it ends. */
  private async recordExport(actor: Principal, userId: string, reason: string, idempotencyKey: string | undefined, requestedBy: string | undefined): Promise<PrivacyRequestRecord> {
    return ledger.insert(this.knex, { type: 'export', subjectId: userId, requester: actor.id, requestedBy, reason, state: 'running', idempotencyKey, receivedAt: this.now(), workerId: this.opts.workerId });
  }

  private async *streamSnapshot(userId: string, requestId: string, signal: AbortSignal): AsyncGenerator<ExportEvent> {
    const trx = await this.openSnapshot({ readOnly: true });
    try {
      for await (const event of this.readSnapshot(trx, userId, requestId, signal)) {
        // The trailer says the export is whole: only once the snapshot closed cleanly.
        if (event.kind === 'trailer') await trx.commit();
        yield event;
      }
    } finally {
      if (!trx.isCompleted()) await trx.rollback().catch(() => undefined);
    }
  }

  /** One REPEATABLE READ snapshot: everything an export reads comes from it. */
  private async openSnapshot(opts: { readOnly: boolean }): Promise<Knex.Transaction> {
    const trx = await this.knex.transaction();
    await trx.raw(`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ${opts.readOnly ? ', READ ONLY' : ''}`);
    return trx;
  }

  /**
   * The export itself, in the caller's snapshot: a header, batches, a trailer. `sink` receives
   * the canonical document's text as it is assembled (the text the trailer's SHA-256 covers).
   */
  private async *readSnapshot(trx: Knex.Transaction, userId: string, requestId: string, signal: AbortSignal, sink?: (text: string) => void): AsyncGenerator<ExportEvent> {
    const exported = this.map.categories.filter((c) => c.export !== undefined);
    const categories: ExportCategoryInfo[] = [];
    for (const c of exported) {
      const q = countQuery(c, userId);
      const res = (await trx.raw(q.sql, q.bindings)) as { rows: Array<{ n: number | string }> };
      const spec = c.export;
      categories.push({
        name: c.name,
        documentKey: spec?.shape === 'object' ? '' : documentKeyOf(c),
        shape: spec?.shape ?? 'list',
        countKey: spec?.count_key,
        totalCount: Number(res.rows[0]?.n ?? 0),
        limit: spec?.limit ?? 0,
      });
    }
    const generatedAt = this.now();
    yield { kind: 'header', userId, requestId, generatedAt, categories };

    const doc = new ExportDocumentAssembler(categories, sink);
    let total = 0;
    for (const c of exported) {
      for await (const rows of readJsonRows(trx, this.exportQueryFor(c, userId), this.fetchRows, signal)) {
        for (const records of this.splitBySize(rows)) {
          doc.add(c.name, records);
          total += records.length;
          yield { kind: 'batch', category: c.name, records };
        }
      }
    }
    const { sha256, counts } = doc.finish();
    yield { kind: 'trailer', counts, sha256, totalRecords: total };
  }

  private exportQueryFor(c: Category, userId: string): Fragment {
    const types = this.opts.columnTypes;
    return exportQuery(c, types, userId, { subjectFromSetting: subjectColumnsAreText(c, types) });
  }

  /** Keeps each message well below gRPC's 4 MB default while carrying many rows. */
  private *splitBySize(rows: string[]): Generator<string[]> {
    let start = 0;
    let chars = 0;
    for (let i = 0; i < rows.length; i++) {
      chars += rows[i]?.length ?? 0;
      if (chars >= this.batchChars) {
        yield rows.slice(start, i + 1);
        start = i + 1;
        chars = 0;
      }
    }
    if (start < rows.length) yield start === 0 ? rows : rows.slice(start);
  }

  /**
   * Runs an export on the server and stores the document encrypted (StoreExport). Calls with
   * one idempotency key are serialized by a lock on the key that holds across replicas. A key
   * whose artifact is stored replays it; a key whose earlier attempt never finished (the caller
   * or a server died) runs the export again under the same request id. The chunks, the
   * artifact's description and the ledger's `completed` commit together, so an attempt that
   * dies leaves nothing half-written.
   */
  async storeExport(actor: Principal, input: { userId: string; reason: string; idempotencyKey: string; requestedBy?: string }, signal: AbortSignal): Promise<StoredExport> {
    const userId = requireId(input.userId, 'user_id');
    const reason = checkReason(input.reason, { required: false }) || DEFAULT_EXPORT_REASON;
    const key = requireId(input.idempotencyKey, 'idempotency_key');
    const requestedBy = optionalId(input.requestedBy ?? '', 'requested_by');
    this.artifactOptions();

    const release = this.takeExportSlot();
    try {
      return await this.storeExportLocked(actor, { userId, reason, key, requestedBy }, signal);
    } finally {
      release();
    }
  }

  /**
   * On PostgreSQL a call holds two pooled connections: the key's lock (which also does the small
   * reads, so no third one is needed meanwhile) and the snapshot.
   */
  private async storeExportLocked(
    actor: Principal,
    { userId, reason, key, requestedBy }: { userId: string; reason: string; key: string; requestedBy: string | undefined },
    signal: AbortSignal,
  ): Promise<StoredExport> {
    return this.db(() =>
      withAdvisoryLock(this.knex, idempotencyLock(key), async (lockTrx) => {
        const db = lockTrx ?? this.knex;
        const prior = await ledger.byIdempotencyKey(db, key);
        if (prior !== undefined) {
          if (prior.type !== 'export' || prior.subjectId !== userId || prior.requester !== actor.id) throw new FailedPreconditionError(KEY_REUSED);
          const stored = await artifacts.get(db, prior.id);
          // Never the old bytes of a forgotten subject, nor a description that promises them.
          if (stored?.state === 'erased') throw new FailedPreconditionError(ARTIFACT_KEY_ERASED);
          if (stored !== undefined) return { requestId: prior.id, artifact: this.artifactView(stored, this.now()), replayed: true };
        }
        await this.authorizeExportOf(actor, userId, db);
        let request: PrivacyRequestRecord;
        if (prior === undefined) {
          request = await this.recordExport(actor, userId, reason, key, requestedBy);
        } else {
          request = prior;
          await ledger.restart(this.knex, prior.id, this.opts.workerId);
        }
        const requestId = request.id;
        // A forget of this subject waits until the artifact is stored, then erases it; a forget
        // that came first is in the snapshot. (PGlite's single connection serializes them anyway.)
        if (lockTrx !== undefined) await lockKeyShared(lockTrx, subjectLockKey(userId));
        const artifact = await this.exportToArtifact(request, lockTrx, signal);
        this.opts.logger.info({ requestId, subjectId: userId, actor: actor.id, sizeBytes: artifact.sizeBytes, rerun: prior !== undefined }, 'export artifact stored');
        return { requestId, artifact, replayed: false };
      }, signal),
    );
  }

  /**
   * The export in its snapshot, written encrypted as it is assembled. On PostgreSQL the chunks
   * go through the connection that holds the key's lock (the snapshot's connection is busy
   * streaming the rows with COPY); embedded PGlite has a single connection, so there they go
   * into the snapshot's own transaction.
   */
  private async exportToArtifact(request: PrivacyRequestRecord, lockTrx: Knex.Transaction | undefined, signal: AbortSignal): Promise<ArtifactRecord> {
    const { cipher, ttlMs, chunkBytes } = this.artifactOptions();
    const { id: requestId, subjectId: userId } = request;
    const snapshot = await this.openSnapshot({ readOnly: lockTrx !== undefined });
    const target = lockTrx ?? snapshot;
    let outcome: Outcome = { kind: 'failed', error: 'The export was interrupted before it was stored' };
    try {
      await artifacts.deleteChunks(target, requestId);
      const dataKey = cipher.newDataKey(requestId);
      await artifacts.insertKey(target, requestId, dataKey.wrapped);
      const writer = new ArtifactWriter(dataKey.cipher, requestId, (chunk) => artifacts.insertChunk(target, requestId, chunk), chunkBytes);
      let trailer: Extract<ExportEvent, { kind: 'trailer' }> | undefined;
      for await (const event of this.readSnapshot(snapshot, userId, requestId, signal, writer.sink)) {
        if (event.kind === 'trailer') trailer = event;
        await writer.flush();
      }
      if (trailer === undefined) throw new Error('the export ended without a trailer');
      const { sizeBytes, chunkCount } = await writer.finish();
      // The last statements in the lock's transaction: nothing may fail after its row lock on the
      // ledger entry, or recording the failure below would wait for that lock.
      if (target !== snapshot) await snapshot.commit();
      const at = this.now();
      const artifact = await artifacts.insert(target, {
        requestId,
        keyId: cipher.keyId,
        sha256: trailer.sha256,
        sizeBytes,
        chunkCount,
        counts: [...trailer.counts].map(([category, exported]) => ({ category, exported })),
        totalRecords: trailer.totalRecords,
        createdAt: at,
        expiresAt: new Date(at.getTime() + ttlMs),
      });
      await ledger.finish(target, requestId, 'completed', at);
      await writeAudit(target, this.map, { eventType: 'user_data_export_stored', actorId: request.requester, targetId: userId, details: auditDetails(request), timestamp: at });
      if (target === snapshot) await snapshot.commit();
      outcome = { kind: 'delivered' };
      return artifact;
    } catch (err) {
      const failed = failureOutcome(err, signal, 'The export failed');
      outcome = failed;
      throw failed.thrown;
    } finally {
      if (!snapshot.isCompleted()) await snapshot.rollback().catch(() => undefined);
      // Outside the lock's transaction, which rolls back: the ledger and the audit keep the failure.
      if (outcome.kind !== 'delivered') await this.recordOutcome(request, outcome, EXPORT_AUDIT);
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
      for await (const bytes of readArtifact(dataCipher, artifact, artifacts.chunks(this.knex, requestId, readChunks ?? 4, signal))) yield { kind: 'chunk', bytes };
      outcome = { kind: 'delivered' };
    } catch (err) {
      // The sweeper or a forget may have deleted the chunks while they were read.
      const now = await this.db(() => artifacts.get(this.knex, requestId));
      const gone = now === undefined ? undefined : this.artifactView(now, this.now());
      const failed = failureOutcome(gone !== undefined && gone.state !== 'available' ? unavailableArtifact(gone) : err, signal, 'The download failed');
      outcome = failed;
      throw failed.thrown;
    } finally {
      await this.recordOutcome(r, outcome, ARTIFACT_READ_AUDIT, false);
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

  /**
   * Fails the requests left `running` by a replica that died (no heartbeat for `staleMs`), and
   * audits each as failed. `othersAreDead`: this process alone uses the database (embedded).
   */
  async recoverInterrupted(opts: { staleMs: number; othersAreDead: boolean }): Promise<number> {
    const self = this.opts.workerId;
    if (self === undefined) return 0;
    const failed = await this.db(() => workers.failOrphans(this.knex, { self, ...opts, error: INTERRUPTED }));
    for (const r of failed) {
      await writeAudit(this.knex, this.map, { eventType: EXPORT_AUDIT.failed, actorId: r.requester, targetId: r.subjectId, details: auditDetails(r), timestamp: this.now() }).catch((err: unknown) => {
        this.opts.logger.warn({ requestId: r.id, err: errorSummary(err) }, 'could not audit an interrupted request');
      });
    }
    if (failed.length > 0) this.opts.logger.warn({ requestIds: failed.map((r) => r.id) }, 'requests interrupted by a server that stopped were marked failed');
    return failed.length;
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

  private artifactView(a: ArtifactRecord, now: Date): ArtifactView {
    return a.state === 'available' && a.expiresAt.getTime() <= now.getTime() ? { ...a, state: 'expired' } : a;
  }

  private artifactOptions(): ArtifactOptions {
    if (this.opts.artifacts === undefined) throw new FailedPreconditionError('This server does not store export artifacts');
    return this.opts.artifacts;
  }

  /**
   * Anonymizes the subject in one transaction. Calls with the same idempotency key, and
   * forgets of the same subject, are serialized by advisory locks; a repeated key replays the
   * first result, and a subject already erased is left as it is.
   */
  async forgetUser(actor: Principal, input: { userId: string; reason: string; idempotencyKey: string; requestedBy?: string }): Promise<ForgetResult> {
    const userId = requireId(input.userId, 'user_id');
    const reason = checkReason(input.reason, { required: true });
    const key = requireId(input.idempotencyKey, 'idempotency_key');
    const requestedBy = optionalId(input.requestedBy ?? '', 'requested_by');

    const result = await this.db(() =>
      this.knex.transaction(async (trx) => {
        await lockKey(trx, idempotencyLock(key));
        const prior = await ledger.byIdempotencyKey(trx, key);
        if (prior !== undefined) return replay(prior, actor, userId);

        await lockKey(trx, subjectLockKey(userId));
        // The rules before existence, as for exports: no answer tells an unauthorized caller who exists.
        authorizeForget(actor, await this.facts.subject(trx, userId), await this.facts.actor(trx, actor.id));
        if (!(await this.facts.subjectExists(trx, userId))) throw new NotFoundError(USER_NOT_FOUND);

        const at = this.now();
        const requestId = randomUUID();
        const erased: unknown = await trx('lethe_erasures').where({ subject_id: userId }).first();
        let rowsAffected: TableRows[] = [];
        if (erased === undefined) {
          // Also scrubs the subject's earlier audit entries, so the entry below is written after.
          rowsAffected = await applyForget(trx, this.opts.forgetPlan, userId, { timestamp: at.getTime(), requestId });
          await trx('lethe_erasures').insert({ subject_id: userId, request_id: requestId, anonymized_at: at });
        }
        // The erasure's entry is the reference's {"reason": …}; a repeated forget names its request.
        const onBehalf = requestedBy === undefined ? {} : { requested_by: requestedBy };
        if (erased === undefined) {
          await writeAudit(trx, this.map, { eventType: 'user_anonymized', actorId: actor.id, targetId: userId, details: { reason, ...onBehalf }, timestamp: at });
        } else {
          await writeAudit(trx, this.map, { eventType: 'user_already_anonymized', actorId: actor.id, targetId: userId, details: { reason, request_id: requestId, ...onBehalf }, timestamp: at });
        }
        const waiting = this.expected.length > 0;
        await ledger.insert(trx, {
          id: requestId,
          type: 'forget',
          subjectId: userId,
          requester: actor.id,
          requestedBy,
          reason,
          state: waiting ? 'anonymized' : 'completed',
          idempotencyKey: key,
          receivedAt: at,
          completedAt: waiting ? undefined : at,
          rowsAffected,
        });
        // Even for a subject erased before: downstream copies may have come back since.
        const event = anonymizedEventFor({ source: this.opts.eventSource ?? 'lethe', userId, requestId, anonymizedAt: at });
        await enqueueEvent(trx, { id: event.id, subject: ANONYMIZED_SUBJECT, payload: JSON.stringify(event) }, at);
        this.opts.logger.info({ requestId, subjectId: userId, actor: actor.id, alreadyErased: erased !== undefined }, 'user anonymized');
        return { userId, requestId, message: FORGET_MESSAGE, rowsAffected, replayed: false };
      }),
    );
    if (!result.replayed) this.opts.onEventEnqueued?.();
    return result;
  }

  async getRequest(actor: Principal, id: string): Promise<PrivacyRequestView> {
    if (!UUID.test(id)) throw new InvalidArgumentError('id must be a privacy request id (a UUID)');
    const r = await this.db(() => ledger.get(this.knex, id));
    if (r === undefined || !(await this.mayRead(actor, r))) throw new NotFoundError(REQUEST_NOT_FOUND);
    return this.view(r, this.now());
  }

  async listRequests(
    actor: Principal,
    input: { subjectId?: string | undefined; state?: RequestState | undefined; overdueOnly: boolean; pageSize: number; after?: { receivedAt: Date; id: string } | undefined },
  ): Promise<PrivacyRequestView[]> {
    const now = this.now();
    const filter: ListFilter = {
      subjectId: input.subjectId === undefined ? undefined : requireId(input.subjectId, 'subject_id'),
      state: input.state,
      overdueOnly: input.overdueOnly,
      visibleTo: (await this.isPlatform(actor)) ? undefined : actor.id,
      limit: input.pageSize,
      after: input.after,
      now,
      confirmationTimeoutMs: this.confirmationTimeoutMs,
    };
    const rows = await this.db(() => ledger.list(this.knex, filter));
    return rows.map((r) => this.view(r, now));
  }

  private view(r: PrivacyRequestRecord, now: Date): PrivacyRequestView {
    const open = r.state !== 'completed' && r.state !== 'failed';
    const overdue = open && (r.dueAt.getTime() < now.getTime() || (r.state === 'anonymized' && r.receivedAt.getTime() + this.confirmationTimeoutMs < now.getTime()));
    const heard = new Set(r.confirmations.map((c) => c.service));
    const pending = r.type === 'forget' && r.state === 'anonymized' ? this.expected.filter((s) => !heard.has(s)) : [];
    return { ...r, overdue, pending, artifact: r.artifact === null ? null : this.artifactView(r.artifact, now) };
  }

  /** Platform principals and platform owners read the whole ledger; others what they made or are the subject of. */
  private async mayRead(actor: Principal, r: PrivacyRequestRecord): Promise<boolean> {
    return r.requester === actor.id || r.subjectId === actor.id || (await this.isPlatform(actor));
  }

  private async isPlatform(actor: Principal): Promise<boolean> {
    return actor.role === 'platform' || (await this.db(() => this.facts.actor(this.knex, actor.id))).isPlatformOwner;
  }

  private async db<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw translateDatabaseError(err);
    }
  }
}

function replay(prior: PrivacyRequestRecord, actor: Principal, userId: string): ForgetResult {
  if (prior.type !== 'forget' || prior.subjectId !== userId || prior.requester !== actor.id) {
    throw new FailedPreconditionError(KEY_REUSED);
  }
  return { userId, requestId: prior.id, message: FORGET_MESSAGE, rowsAffected: prior.rowsAffected, replayed: true };
}

/** Why a request the caller may read has no artifact to fetch. */
function missingArtifact(r: PrivacyRequestRecord): LetheError {
  const stored = r.type === 'export' && r.idempotencyKey !== null;
  if (!stored) return new NotFoundError(NO_ARTIFACT);
  if (r.state === 'running') return new FailedPreconditionError('The export is still running; fetch the artifact once the request is completed');
  return new FailedPreconditionError('The export stored no artifact; call StoreExport again with the same idempotency key');
}

type Outcome = { readonly kind: 'delivered' } | { readonly kind: 'cancelled' | 'failed'; readonly error: string; readonly thrown?: unknown };

const INTERRUPTED = 'interrupted: the server carrying it out stopped before it finished; run it again';
const EXPORT_AUDIT = { delivered: 'user_data_exported', cancelled: 'user_data_export_cancelled', failed: 'user_data_export_failed' } as const;
const ARTIFACT_READ_AUDIT = { delivered: 'export_artifact_read', cancelled: 'export_artifact_read_cancelled', failed: 'export_artifact_read_failed' } as const;

/** How a call that threw ended. Only domain messages go into the ledger: a driver's message may quote data. */
function failureOutcome(err: unknown, signal: AbortSignal, fallback: string): Outcome & { readonly thrown: unknown } {
  const e = translateDatabaseError(err);
  const error = e instanceof LetheError ? e.message : fallback;
  return { kind: signal.aborted ? 'cancelled' : 'failed', error, thrown: e };
}

function auditDetails(r: PrivacyRequestRecord): Record<string, string> {
  return { request_id: r.id, reason: r.reason, ...(r.requestedBy === null ? {} : { requested_by: r.requestedBy }) };
}

/** Why a described artifact can no longer be fetched. */
function unavailableArtifact(a: ArtifactView): LetheError {
  return new FailedPreconditionError(a.state === 'erased' ? ARTIFACT_ERASED : artifactExpired(a.expiresAt));
}
