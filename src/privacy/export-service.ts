import type { Knex } from 'knex';
import { AbortedError, NotFoundError, ResourceExhaustedError, USER_NOT_FOUND, errorSummary } from '../errors.js';
import { workers } from '../store/workers.js';
import { type PrivacyRequestRecord, ledger } from '../store/ledger.js';
import { writeAudit } from './audit.js';
import { authorizeExport } from './authorization.js';
import { type Category, documentKeyOf } from './data-map.js';
import { type DocumentCategory, ExportDocumentAssembler } from './export-document.js';
import type { Principal } from './principal.js';
import { readJsonRows } from './row-cursor.js';
import { type Fragment, countQuery, exportQuery, subjectColumnsAreText } from './sql.js';
import { received } from './due-date.js';
import { checkReason, requireId } from './validation.js';
import { auditDetails, type EngineOptions, EnginePart, EXPORT_AUDIT, failureOutcome, INTERRUPTED, type Outcome } from './engine-part.js';

const stalledMessage = (ms: number): string =>
  `The export was stopped: the caller read nothing for ${ms / 1000}s; read the stream as it comes, or run the export again`;

export const DEFAULT_EXPORT_REASON = 'Data subject access request (GDPR Art. 15)';

interface ExportCategoryInfo extends DocumentCategory {
  readonly limit: number;
}

export type ExportEvent =
  | {
      readonly kind: 'header';
      readonly userId: string;
      readonly requestId: string;
      readonly generatedAt: Date;
      readonly categories: readonly ExportCategoryInfo[];
    }
  | { readonly kind: 'batch'; readonly category: string; readonly records: string[] }
  | { readonly kind: 'trailer'; readonly counts: ReadonlyMap<string, number>; readonly sha256: string; readonly totalRecords: number };

/** ExportUser: the subject's data read in one snapshot and streamed; also the reader StoreExport stores. */
export class ExportService extends EnginePart {
  private readonly fetchRows: number;
  private readonly batchChars: number;
  private readonly stallMs: number;
  private exportsRunning = 0;

  constructor(opts: EngineOptions) {
    super(opts);
    this.fetchRows = opts.exportFetchRows ?? 2000;
    this.batchChars = opts.exportBatchChars ?? 128 * 1024;
    this.stallMs = opts.exportStallTimeoutMs ?? 30_000;
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
    // Once: a stalled export is recorded when its snapshot is released, not when (if) its caller returns.
    let recorded: Promise<void> | undefined;
    const record = (o: Outcome) => (recorded ??= this.recordOutcome(request, o, EXPORT_AUDIT));
    try {
      // The generator resumes after its last yield only once the trailer was handed on: the
      // document was delivered, and only then is the disclosure audited as done.
      yield* this.streamSnapshot(userId, request.id, signal, () => record({ kind: 'failed', error: stalledMessage(this.stallMs) }));
      outcome = { kind: 'delivered' };
    } catch (err) {
      const failed = failureOutcome(err, signal, 'The export failed');
      outcome = failed;
      throw failed.thrown;
    } finally {
      await record(outcome);
    }
  }

  /**
   * The rules first, then existence: a caller who could not export the subject if it existed
   * gets the same answer whether or not it exists (a missing subject has no memberships).
   */
  async authorizeExportOf(actor: Principal, userId: string, db: Knex | Knex.Transaction = this.knex): Promise<void> {
    authorizeExport(actor, userId, await this.facts.subject(db, userId), await this.facts.actor(db, actor.id));
    if (!(await this.facts.subjectExists(db, userId))) throw new NotFoundError(USER_NOT_FOUND);
  }

  /** One of the export slots, or RESOURCE_EXHAUSTED at once; the returned function gives it back. */
  takeExportSlot(): () => void {
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
  async recordExport(
    actor: Principal,
    userId: string,
    reason: string,
    idempotencyKey: string | undefined,
    requestedBy: string | undefined,
  ): Promise<PrivacyRequestRecord> {
    return ledger.insert(this.knex, {
      type: 'export',
      subjectId: userId,
      requester: actor.id,
      requestedBy,
      reason,
      state: 'running',
      idempotencyKey,
      ...received(this.now()),
      workerId: this.opts.workerId,
    });
  }

  /**
   * The snapshot, streamed to a caller who sets the pace. A caller who takes nothing for
   * exportStallTimeoutMs does not keep the snapshot's pooled connection: the read is stopped and
   * the transaction rolled back at once, while the stream waits, and the call ends ABORTED.
   */
  private async *streamSnapshot(userId: string, requestId: string, signal: AbortSignal, onStall: () => Promise<void>): AsyncGenerator<ExportEvent> {
    const trx = await this.openSnapshot({ readOnly: true });
    const events = this.readSnapshot(trx, userId, requestId, signal);
    let stalled = false;
    const release = async () => {
      stalled = true;
      // The reader is suspended at its yield: return() runs its clean-up (a COPY's socket is
      // closed, which ends the query), then the rollback gives the connection back.
      await events.return(undefined).catch(() => undefined);
      await trx.rollback().catch(() => undefined);
      this.opts.logger.warn({ requestId, stallTimeoutMs: this.stallMs }, 'export stalled: the caller read nothing; its snapshot was released');
      await onStall();
    };
    let timer: NodeJS.Timeout | undefined;
    try {
      for (;;) {
        const next = await events.next();
        if (next.done === true) break;
        const event = next.value;
        // The trailer says the export is whole: only once the snapshot closed cleanly.
        if (event.kind === 'trailer') await trx.commit();
        timer = setTimeout(() => void release(), this.stallMs);
        yield event;
        clearTimeout(timer);
        if (stalled) throw new AbortedError(stalledMessage(this.stallMs));
      }
    } finally {
      clearTimeout(timer);
      if (!trx.isCompleted()) await trx.rollback().catch(() => undefined);
    }
  }

  /** One REPEATABLE READ snapshot: everything an export reads comes from it. */
  async openSnapshot(opts: { readOnly: boolean }): Promise<Knex.Transaction> {
    const trx = await this.knex.transaction();
    await trx.raw(`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ${opts.readOnly ? ', READ ONLY' : ''}`);
    return trx;
  }

  /**
   * The export itself, in the caller's snapshot: a header, batches, a trailer. `sink` receives
   * the canonical document's text as it is assembled (the text the trailer's SHA-256 covers).
   */
  async *readSnapshot(
    trx: Knex.Transaction,
    userId: string,
    requestId: string,
    signal: AbortSignal,
    sink?: (text: string) => void,
  ): AsyncGenerator<ExportEvent> {
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
   * Fails the requests left `running` by a replica that died (no heartbeat for `staleMs`), and
   * audits each as failed. `othersAreDead`: this process alone uses the database (embedded).
   */
  async recoverInterrupted(opts: { staleMs: number; othersAreDead: boolean }): Promise<number> {
    const self = this.opts.workerId;
    if (self === undefined) return 0;
    const failed = await this.db(() => workers.failOrphans(this.knex, { self, ...opts, error: INTERRUPTED }));
    for (const r of failed) {
      await writeAudit(this.knex, this.map, {
        eventType: EXPORT_AUDIT.failed,
        actorId: r.requester,
        targetId: r.subjectId,
        details: auditDetails(r),
        timestamp: this.now(),
      }).catch((err: unknown) => {
        this.opts.logger.warn({ requestId: r.id, err: errorSummary(err) }, 'could not audit an interrupted request');
      });
    }
    if (failed.length > 0) this.opts.logger.warn({ requestIds: failed.map((r) => r.id) }, 'requests interrupted by a server that stopped were marked failed');
    return failed.length;
  }
}
