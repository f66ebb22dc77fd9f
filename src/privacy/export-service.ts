import type { Knex } from 'knex';
import { AbortedError, NotFoundError, ResourceExhaustedError, USER_NOT_FOUND, errorSummary } from '../errors.js';
import { workers } from '../store/workers.js';
import { type PrivacyRequestRecord, ledger } from '../store/ledger.js';
import { writeAudit } from './audit.js';
import { authorizeExport } from './authorization.js';
import { type DocumentText, ExportDocumentAssembler } from './export-document.js';
import { JsonRecords } from './json-records.js';
import type { Principal } from './principal.js';
import { type SnapshotCategory, SnapshotReader } from './snapshot-reader.js';
import type { DownstreamOutcome } from './downstream.js';
import { received } from './due-date.js';
import { checkReason, requireId } from './validation.js';
import { auditDetails, type EngineOptions, EnginePart, EXPORT_AUDIT, failureOutcome, INTERRUPTED, type Outcome } from './engine-part.js';

const stalledMessage = (ms: number): string =>
  `The export was stopped: the caller read nothing for ${ms / 1000}s; read the stream as it comes, or run the export again`;

export const DEFAULT_EXPORT_REASON = 'Data subject access request (GDPR Art. 15)';

export type ExportEvent =
  | {
      readonly kind: 'header';
      readonly userId: string;
      readonly requestId: string;
      readonly generatedAt: Date;
      readonly categories: readonly SnapshotCategory[];
      /** The downstream services asked, in document order. */
      readonly services: readonly string[];
    }
  /** A downstream service's part begins: its categories, by its own data map. */
  | { readonly kind: 'section'; readonly service: string; readonly categories: readonly SnapshotCategory[] }
  /** `service` is absent for the server's own categories. */
  | { readonly kind: 'batch'; readonly category: string; readonly records: JsonRecords; readonly service?: string }
  | { readonly kind: 'progress'; readonly outcome: DownstreamOutcome }
  | {
      readonly kind: 'trailer';
      readonly counts: ReadonlyMap<string, number>;
      readonly sha256: string;
      readonly totalRecords: number;
      readonly downstream: readonly DownstreamOutcome[];
      /** Some service's part is missing or incomplete: the document says which. */
      readonly partial: boolean;
    };

/** ExportUser: the subject's data read in one snapshot and streamed; also the reader StoreExport stores. */
export class ExportService extends EnginePart {
  private readonly reader: SnapshotReader;
  private readonly stallMs: number;
  private exportsRunning = 0;

  constructor(opts: EngineOptions) {
    super(opts);
    this.reader = new SnapshotReader(opts.dataMap, opts.columnTypes, { fetchRows: opts.exportFetchRows, batchBytes: opts.exportBatchBytes });
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
    let downstream: readonly DownstreamOutcome[] = [];
    const record = (o: Outcome) => (recorded ??= this.recordOutcome(request, o, EXPORT_AUDIT, true, downstream));
    try {
      // The generator resumes after its last yield only once the trailer was handed on: the
      // document was delivered, and only then is the disclosure audited as done.
      for await (const event of this.streamSnapshot(userId, request.id, signal, () => record({ kind: 'failed', error: stalledMessage(this.stallMs) }))) {
        if (event.kind === 'trailer') downstream = event.downstream;
        yield event;
      }
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
    // Read in one statement, decided in that order.
    const read = this.facts.forDecision(userId, actor.id, []);
    const facts = read.parse(
      ((await db.raw(read.statement.sql, read.statement.bindings as Knex.RawBinding[])) as { rows: Array<Record<string, unknown>> }).rows,
    );
    authorizeExport(actor, userId, facts.subject, facts.actor);
    if (!facts.subjectExists) throw new NotFoundError(USER_NOT_FOUND);
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
    // The export is whole only if the snapshot closed cleanly: a failed commit fails it.
    const endSnapshot = async () => {
      await trx.commit();
    };
    const events = this.readSnapshot(trx, userId, requestId, signal, { endSnapshot });
    let stalled = false;
    const release = async () => {
      stalled = true;
      // The reader is suspended at its yield: return() runs its clean-up (a COPY's socket is
      // closed, which ends the query), then the rollback gives the connection back (already
      // given back once the server's own categories were read).
      await events.return(undefined).catch(() => undefined);
      if (!trx.isCompleted()) await trx.rollback().catch(() => undefined);
      this.opts.logger.warn({ requestId, stallTimeoutMs: this.stallMs }, 'export stalled: the caller read nothing; its snapshot was released');
      await onStall();
    };
    let timer: NodeJS.Timeout | undefined;
    try {
      for (;;) {
        const next = await events.next();
        if (next.done === true) break;
        const event = next.value;
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
    // The mode goes with BEGIN itself (one round trip, not two).
    return this.knex.transaction(undefined, { isolationLevel: 'repeatable read', readOnly: opts.readOnly });
  }

  /**
   * The export itself: a header, batches, a trailer. The server's own categories come from the
   * caller's snapshot; once they are read, `endSnapshot` runs, before any downstream service is
   * asked, so that no transaction waits on the services (each may take up to its timeout per
   * chunk). `sink` receives the canonical document's text as it is assembled (the text the
   * trailer's SHA-256 covers).
   */
  async *readSnapshot(
    trx: Knex.Transaction,
    userId: string,
    requestId: string,
    signal: AbortSignal,
    opts: { endSnapshot: () => Promise<void>; sink?: (text: DocumentText) => void },
  ): AsyncGenerator<ExportEvent> {
    const contents = await this.reader.contents(trx, userId);
    const categories = contents.categories;
    const generatedAt = this.now();
    const downstream = this.opts.downstream;
    const services = downstream?.services ?? [];
    yield { kind: 'header', userId, requestId, generatedAt, categories, services };

    const doc = new ExportDocumentAssembler(categories, opts.sink, services);
    let total = 0;
    for await (const { category, records } of this.reader.batches(trx, userId, contents, signal)) {
      doc.add(category, records);
      total += records.length;
      yield { kind: 'batch', category, records };
    }
    await opts.endSnapshot();
    const outcomes: DownstreamOutcome[] = [];
    for (const service of services) {
      for await (const e of downstream?.source.exportFrom(service, { subjectId: userId, requestId }, signal) ?? []) {
        if (e.kind === 'section') {
          doc.startSection(service, e.categories);
          yield { kind: 'section', service, categories: e.categories };
        } else if (e.kind === 'batch') {
          const records = JsonRecords.fromStrings(e.records);
          doc.add(e.category, records, service);
          total += records.length;
          yield { kind: 'batch', category: e.category, records, service };
        } else {
          outcomes.push(e.outcome);
          yield { kind: 'progress', outcome: e.outcome };
        }
      }
    }
    const { sha256, counts } = doc.finish(outcomes);
    const partial = outcomes.some((o) => o.status !== 'complete') || outcomes.length < services.length;
    yield { kind: 'trailer', counts, sha256, totalRecords: total, downstream: outcomes, partial };
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
