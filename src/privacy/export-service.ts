import { AbortedError, NotFoundError, ResourceExhaustedError, USER_NOT_FOUND, errorSummary } from '../errors.js';
import { workers } from '../store/workers.js';
import { type ExportSession, openExportSession } from '../store/export-session.js';
import { type NewRequest, type PrivacyRequestRecord, insertStatement, ledger } from '../store/ledger.js';
import type { Rows, SnapshotQueries, Statement } from '../store/session.js';
import { writeAudit } from './audit.js';
import { authorizeExport } from './authorization.js';
import { type DocumentText, ExportDocumentAssembler } from './export-document.js';
import { JsonRecords } from './json-records.js';
import type { Principal } from './principal.js';
import { type SnapshotCategory, type SnapshotContents, SnapshotReader } from './snapshot-reader.js';
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
    const session = await this.db(() => openExportSession(this.knex));
    try {
      yield* this.exportIn(session, actor, userId, reason, signal);
    } finally {
      await session.release();
    }
  }

  private async *exportIn(session: ExportSession, actor: Principal, userId: string, reason: string, signal: AbortSignal): AsyncGenerator<ExportEvent> {
    await this.db(() => this.authorizeExportOf(actor, userId, (s) => session.read(s)));
    // The ledger entry, committed before the snapshot reads anything, then the snapshot and its contents.
    const { statement, record: request } = insertStatement(this.newExport(actor, userId, reason, undefined, undefined));

    // Stays as it is only when the consumer stops iterating (a cancelled call): not delivered.
    let outcome: Outcome = { kind: 'cancelled', error: 'The export was interrupted before it finished' };
    // Once: a stalled export is recorded when its snapshot is released, not when (if) its caller
    // returns. With the snapshot's COMMIT when it is still open (one round trip).
    let recorded: Promise<void> | undefined;
    let downstream: readonly DownstreamOutcome[] = [];
    const record = (o: Outcome) =>
      (recorded ??= session.committedBefore
        ? this.recordOutcome(request, o, EXPORT_AUDIT, { downstream, run: (statements) => session.finish(statements) })
        : Promise.resolve());
    try {
      const contents = this.reader.parseContents(await this.db(() => session.openSnapshot([statement], this.reader.contentsStatement(userId))));
      // The generator resumes after its last yield only once the trailer was handed on: the
      // document was delivered, and only then is the disclosure audited as done.
      for await (const event of this.streamSnapshot(session, contents, userId, request.id, signal, () =>
        record({ kind: 'failed', error: stalledMessage(this.stallMs) }),
      )) {
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
  async authorizeExportOf(actor: Principal, userId: string, read: (s: Statement) => Promise<Rows>): Promise<void> {
    // Read in one statement, decided in that order.
    const facts = this.facts.forDecision(userId, actor.id, []);
    const decided = facts.parse(await read(facts.statement));
    authorizeExport(actor, userId, decided.subject, decided.actor);
    if (!decided.subjectExists) throw new NotFoundError(USER_NOT_FOUND);
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
    return ledger.insert(this.knex, this.newExport(actor, userId, reason, idempotencyKey, requestedBy));
  }

  private newExport(actor: Principal, userId: string, reason: string, idempotencyKey: string | undefined, requestedBy: string | undefined): NewRequest {
    return {
      type: 'export',
      subjectId: userId,
      requester: actor.id,
      requestedBy,
      reason,
      state: 'running',
      idempotencyKey,
      ...received(this.now()),
      workerId: this.opts.workerId,
    };
  }

  /**
   * The snapshot, streamed to a caller who sets the pace. A caller who takes nothing for
   * exportStallTimeoutMs does not keep the snapshot's pooled connection: the read is stopped and
   * the transaction rolled back at once, while the stream waits, and the call ends ABORTED.
   */
  private async *streamSnapshot(
    session: ExportSession,
    contents: SnapshotContents,
    userId: string,
    requestId: string,
    signal: AbortSignal,
    onStall: () => Promise<void>,
  ): AsyncGenerator<ExportEvent> {
    // Without downstream services the snapshot stays open until the outcome is recorded, and
    // commits with it (a READ ONLY snapshot's COMMIT cannot undo what it read); with them it ends
    // before they are asked.
    const endSnapshot = (this.opts.downstream?.services.length ?? 0) === 0 ? async () => {} : () => session.endSnapshot();
    const events = this.readSnapshot(session.snapshot, userId, requestId, signal, { endSnapshot, contents });
    let stalled = false;
    const release = async () => {
      stalled = true;
      // The reader is suspended at its yield: return() runs its clean-up (a COPY's socket is
      // closed, which ends the query); then onStall ends the snapshot and records the failure
      // (on another connection if that one was closed), which gives the connection back.
      await events.return(undefined).catch(() => undefined);
      this.opts.logger.warn({ requestId, stallTimeoutMs: this.stallMs }, 'export stalled: the caller read nothing; its snapshot was released');
      await onStall();
      await session.release();
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
    }
  }

  /**
   * The export itself: a header, batches, a trailer. The server's own categories come from the
   * caller's snapshot; once they are read, `endSnapshot` runs, before any downstream service is
   * asked, so that no transaction waits on the services (each may take up to its timeout per
   * chunk). `sink` receives the canonical document's text as it is assembled (the text the
   * trailer's SHA-256 covers).
   */
  async *readSnapshot(
    snapshot: SnapshotQueries,
    userId: string,
    requestId: string,
    signal: AbortSignal,
    opts: { endSnapshot: () => Promise<void>; sink?: (text: DocumentText) => void; contents?: SnapshotContents },
  ): AsyncGenerator<ExportEvent> {
    const contents = opts.contents ?? (await this.reader.contents(snapshot, userId));
    const categories = contents.categories;
    const generatedAt = this.now();
    const downstream = this.opts.downstream;
    const services = downstream?.services ?? [];
    yield { kind: 'header', userId, requestId, generatedAt, categories, services };

    const doc = new ExportDocumentAssembler(categories, opts.sink, services);
    let total = 0;
    for await (const { category, records } of this.reader.batches(snapshot, userId, contents, signal)) {
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
