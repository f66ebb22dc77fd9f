import type { DownstreamExportSource, DownstreamOutcome } from './downstream.js';
import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { FailedPreconditionError, LetheError, errorSummary } from '../errors.js';
import type { ArtifactRecord } from '../store/artifacts.js';
import { translateDatabaseError } from '../store/errors.js';
import { type DownstreamExportPart, type PrivacyRequestRecord, downstreamExportsInsert } from '../store/ledger.js';
import { ledgerSql } from '../store/ledger-sql.js';
import { type Statement, inOneTransaction } from '../store/session.js';
import type { ArtifactCipher } from './artifact-cipher.js';
import { type AuditEventType, auditPart } from './audit.js';
import type { DataMap } from './data-map.js';
import { ARTIFACT_ERASED, artifactExpired } from './export-artifacts.js';
import { FactsReader } from './facts.js';
import type { ForgetPlan } from './forget.js';
import type { Principal } from './principal.js';
import type { ColumnTypes } from './sql.js';

export const REQUEST_NOT_FOUND = 'Privacy request not found';
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const KEY_REUSED = 'idempotency_key was already used for a different request; use a new key';
// ForgetUser and StoreExport share one key space (the ledger's idempotency_key column).
export const idempotencyLock = (key: string): string => `lethe:idempotency:${key}`;

export interface ArtifactOptions {
  readonly cipher: ArtifactCipher;
  /** How long a stored export can be fetched. */
  readonly ttlMs: number;
  /** Chunks read per query when an artifact is fetched. */
  readonly readChunks?: number;
  /** Plaintext bytes per chunk (default 256 KiB). */
  readonly chunkBytes?: number;
}

/** An artifact as callers see it: `expired` as soon as its expiry passed, even before the sweeper ran. */
export type ArtifactView = ArtifactRecord;

export interface EngineOptions {
  readonly knex: Knex;
  readonly dataMap: DataMap;
  readonly columnTypes: ColumnTypes;
  /** The data map's forget and Lethe's own tables', compiled (see prepareServerDataMap). */
  readonly forgetPlan: ForgetPlan;
  readonly logger: Logger;
  /** Rows per cursor fetch during an export. */
  /** Downstream services asked for their copies on every export, and where to ask them. */
  readonly downstream?: { readonly services: readonly string[]; readonly source: DownstreamExportSource };
  readonly exportFetchRows?: number;
  /** A person's own erasure runs this long after they asked (0: at once; default 7 days). */
  readonly selfErasureGraceMs?: number;
  /** An ExportUser caller that takes nothing for this long loses the export (default 30 s). */
  readonly exportStallTimeoutMs?: number;
  /** Upper bound on the bytes of records' JSON text in one batch message. */
  readonly exportBatchBytes?: number;
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
  /** A pool of its own for downstream receipts, so that a queue of forgets never starves them (default: knex). */
  readonly receiptsKnex?: Knex | undefined;
  /** This server replica, named on the requests it runs (see recoverInterrupted). */
  readonly workerId?: string;
  /** Stored exports (StoreExport, GetExportArtifact); unset: those calls fail. */
  readonly artifacts?: ArtifactOptions | undefined;
}

/**
 * What the engine's parts share: the database, the data map, the clock, and the few steps
 * every part takes (translating database errors, recording how a request ended, who may read
 * the ledger). Each capability (export, stored exports, erasure, the ledger) is a part.
 */
export abstract class EnginePart {
  protected readonly knex: Knex;
  protected readonly map: DataMap;
  protected readonly facts: FactsReader;
  protected readonly now: () => Date;

  constructor(protected readonly opts: EngineOptions) {
    this.knex = opts.knex;
    this.map = opts.dataMap;
    this.facts = new FactsReader(opts.dataMap);
    this.now = opts.now ?? (() => new Date());
  }

  /**
   * Closes a request in the ledger and audits how it ended, in one transaction: delivered,
   * cancelled by the caller, or failed. Never throws (the caller's answer is already decided).
   */
  protected async recordOutcome(
    r: PrivacyRequestRecord,
    outcome: Outcome,
    events: Readonly<Record<Outcome['kind'], AuditEventType>>,
    {
      ledgerToo = true,
      downstream = [],
      run = (statements) => inOneTransaction(this.knex, statements),
    }: {
      readonly ledgerToo?: boolean;
      /** An export's downstream parts, recorded beside it (a partial export says so in its error). */
      readonly downstream?: readonly DownstreamOutcome[];
      /** Runs the statements in a transaction of their own (by default on a pooled connection, in one round trip). */
      readonly run?: (statements: readonly Statement[]) => Promise<unknown>;
    } = {},
  ): Promise<void> {
    const at = this.now();
    const statements: Statement[] = [];
    if (ledgerToo) {
      if (outcome.kind !== 'delivered') statements.push(ledgerSql.finish(r.id, 'failed', at, outcome.error));
      else statements.push(...deliveredExport(this.knex, r.id, at, downstream));
    }
    const audit = auditPart(this.map, {
      eventType: events[outcome.kind],
      actorId: r.requester,
      targetId: r.subjectId,
      details: auditDetails(r),
      timestamp: at,
    });
    if (audit !== undefined) statements.push(audit);
    await run(statements).catch((err: unknown) => {
      this.opts.logger.warn({ requestId: r.id, err: errorSummary(err) }, 'could not record the outcome of a request');
    });
  }

  /** Platform principals and platform owners read the whole ledger; others what they made or are the subject of. */
  protected async mayRead(actor: Principal, r: PrivacyRequestRecord): Promise<boolean> {
    return r.requester === actor.id || r.subjectId === actor.id || (await this.isPlatform(actor));
  }

  protected async isPlatform(actor: Principal): Promise<boolean> {
    return actor.role === 'platform' || (await this.db(() => this.facts.actor(this.knex, actor.id))).isPlatformOwner;
  }

  protected artifactView(a: ArtifactRecord, now: Date): ArtifactView {
    return a.state === 'available' && a.expiresAt.getTime() <= now.getTime() ? { ...a, state: 'expired' } : a;
  }

  protected async db<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw translateDatabaseError(err);
    }
  }
}

export type Outcome = { readonly kind: 'delivered' } | { readonly kind: 'cancelled' | 'failed'; readonly error: string; readonly thrown?: unknown };

export const INTERRUPTED = 'interrupted: the server carrying it out stopped before it finished; run it again';
export const EXPORT_AUDIT = { delivered: 'user_data_exported', cancelled: 'user_data_export_cancelled', failed: 'user_data_export_failed' } as const;
export const ARTIFACT_READ_AUDIT = {
  delivered: 'export_artifact_read',
  cancelled: 'export_artifact_read_cancelled',
  failed: 'export_artifact_read_failed',
} as const;

/** How a call that threw ended. Only domain messages go into the ledger: a driver's message may quote data. */
export function failureOutcome(err: unknown, signal: AbortSignal, fallback: string): Outcome & { readonly thrown: unknown } {
  const e = translateDatabaseError(err);
  const error = e instanceof LetheError ? e.message : fallback;
  return { kind: signal.aborted ? 'cancelled' : 'failed', error, thrown: e };
}

export function auditDetails(r: PrivacyRequestRecord): Record<string, string> {
  return { request_id: r.id, reason: r.reason, ...(r.requestedBy === null ? {} : { requested_by: r.requestedBy }) };
}

/** Why a described artifact can no longer be fetched. */
export function unavailableArtifact(a: ArtifactView): LetheError {
  return new FailedPreconditionError(a.state === 'erased' ? ARTIFACT_ERASED : artifactExpired(a.expiresAt));
}

/**
 * A delivered export in the ledger: completed, with each downstream service's part beside it; one
 * that lacks a part says so in its error.
 */
export async function finishExport(trx: Knex.Transaction, requestId: string, at: Date, downstream: readonly DownstreamOutcome[]): Promise<void> {
  for (const s of deliveredExport(trx, requestId, at, downstream)) await trx.raw(s.sql, s.bindings);
}

/** finishExport's statements, to send with others. */
function deliveredExport(db: Knex | Knex.Transaction, requestId: string, at: Date, downstream: readonly DownstreamOutcome[]): Statement[] {
  const finish = ledgerSql.finish(requestId, 'completed', at, partialNote(downstream));
  if (downstream.length === 0) return [finish];
  const parts: DownstreamExportPart[] = downstream.map((d) => ({
    service: d.service,
    status: d.status === 'complete' ? 'exported' : d.status,
    error: d.error,
  }));
  return [finish, downstreamExportsInsert(db, requestId, parts, at).toSQL()];
}

/** The ledger's note on a delivered export that lacks some downstream part; undefined when whole. */
function partialNote(downstream: readonly DownstreamOutcome[]): string | undefined {
  const missing = downstream.filter((d) => d.status !== 'complete');
  if (missing.length === 0) return undefined;
  return `partial: ${missing.map((d) => `${d.service} ${d.status === 'timed_out' ? 'timed out' : 'failed'}`).join(', ')} (see the confirmations)`;
}
