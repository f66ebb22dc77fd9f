import { FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from '../errors.js';
import {
  type ConfirmationOutcome,
  type ListFilter,
  type NewConfirmation,
  OPEN_STATES,
  type PrivacyRequestRecord,
  type RequestState,
  ledger,
} from '../store/ledger.js';
import { recordConfirmations } from '../store/confirmations.js';
import { writeAudit } from './audit.js';
import { dueDate } from './due-date.js';
import type { Principal } from './principal.js';
import { checkReason, requireId } from './validation.js';
import { type EngineOptions, EnginePart, REQUEST_NOT_FOUND, UUID } from './engine-part.js';

const EXTEND_DENIED = "Only platform owners may extend a request's due date";
const ALREADY_EXTENDED = 'The due date was already extended once; GDPR Art. 12(3) allows one extension of at most two months';

/** A ledger entry as callers see it: with `overdue`, and a pending entry for every expected service not yet heard from. */
export type PrivacyRequestView = PrivacyRequestRecord & { readonly overdue: boolean; readonly pending: readonly string[] };

/** The request ledger as callers may read it: one request, or a filtered page. */
export class LedgerQueries extends EnginePart {
  private readonly expected: readonly string[];
  private readonly confirmationTimeoutMs: number;

  constructor(opts: EngineOptions) {
    super(opts);
    this.expected = opts.expectedServices ?? [];
    this.confirmationTimeoutMs = opts.confirmationTimeoutMs ?? 7 * 86_400_000;
  }

  async getRequest(actor: Principal, id: string): Promise<PrivacyRequestView> {
    if (!UUID.test(id)) throw new InvalidArgumentError('id must be a privacy request id (a UUID)');
    const r = await this.db(() => ledger.get(this.knex, id));
    if (r === undefined || !(await this.mayRead(actor, r))) throw new NotFoundError(REQUEST_NOT_FOUND);
    return this.view(r, this.now());
  }

  async listRequests(
    actor: Principal,
    input: {
      subjectId?: string | undefined;
      state?: RequestState | undefined;
      overdueOnly: boolean;
      dueBefore?: Date | undefined;
      pageSize: number;
      after?: { receivedAt: Date; id: string } | undefined;
    },
  ): Promise<PrivacyRequestView[]> {
    const now = this.now();
    const filter: ListFilter = {
      subjectId: input.subjectId === undefined ? undefined : requireId(input.subjectId, 'subject_id'),
      state: input.state,
      overdueOnly: input.overdueOnly,
      dueBefore: input.dueBefore,
      visibleTo: (await this.isPlatform(actor)) ? undefined : actor.id,
      limit: input.pageSize,
      after: input.after,
      now,
      confirmationTimeoutMs: this.confirmationTimeoutMs,
    };
    const rows = await this.db(() => ledger.list(this.knex, filter));
    return rows.map((r) => this.view(r, now));
  }

  /**
   * Records a downstream service's receipt for a forget: completed once every expected service
   * has confirmed a purge. A receipt for a request this ledger does not hold is ignored (another
   * installation may share the stream).
   */
  async recordConfirmations(receipts: readonly NewConfirmation[]): Promise<ConfirmationOutcome[]> {
    const knex = this.opts.receiptsKnex ?? this.knex;
    // Purge receipts a batch at a time; change receipts (far fewer) one at a time.
    const purges = receipts.filter((r) => r.change !== true);
    const outcomes = new Map<NewConfirmation, ConfirmationOutcome>();
    (await recordConfirmations(knex, purges, this.expected, this.now())).forEach((o, i) => outcomes.set(purges[i] as NewConfirmation, o));
    for (const r of receipts) if (r.change === true) outcomes.set(r, await ledger.recordChangeConfirmation(knex, r, this.expected, this.now()));
    return receipts.map((r) => outcomes.get(r) ?? 'unknown-request');
  }

  /**
   * Extends an open request's due date once, by one or two months after the original one
   * (GDPR Art. 12(3): "by two further months where necessary"). Platform owners and platform
   * principals only; the ledger keeps the original date and the reason, the audit log the act.
   */
  async extendRequest(actor: Principal, input: { id: string; months: number; reason: string }): Promise<PrivacyRequestView> {
    if (!UUID.test(input.id)) throw new InvalidArgumentError('id must be a privacy request id (a UUID)');
    if (input.months !== 1 && input.months !== 2) throw new InvalidArgumentError('months must be 1 or 2 (GDPR Art. 12(3) allows two further months at most)');
    const reason = checkReason(input.reason, { required: true });
    const r = await this.db(() => ledger.get(this.knex, input.id));
    if (r === undefined || !(await this.mayRead(actor, r))) throw new NotFoundError(REQUEST_NOT_FOUND);
    if (!(await this.isPlatform(actor))) throw new PermissionDeniedError(EXTEND_DENIED);
    const at = this.now();
    await this.db(() =>
      this.knex.transaction(async (trx) => {
        const current = await ledger.lock(trx, input.id);
        if (current === undefined) throw new NotFoundError(REQUEST_NOT_FOUND);
        if (!OPEN_STATES.includes(current.state)) throw new FailedPreconditionError(`Only an open request can be extended; this one is ${current.state}`);
        if (current.originalDueAt !== null) throw new FailedPreconditionError(ALREADY_EXTENDED);
        await ledger.extend(trx, current.id, dueDate(current.dueAt, input.months), current.dueAt, reason);
        await writeAudit(trx, this.map, {
          eventType: 'privacy_request_extended',
          actorId: actor.id,
          targetId: current.subjectId,
          details: { request_id: current.id, months: input.months, reason },
          timestamp: at,
        });
      }),
    );
    return this.getRequest(actor, input.id);
  }

  /** A request as the caller who just wrote it sees it, from what it wrote (no read). */
  writtenView(r: PrivacyRequestRecord): PrivacyRequestView {
    return this.view(r, this.now());
  }

  private view(r: PrivacyRequestRecord, now: Date): PrivacyRequestView {
    const open = OPEN_STATES.includes(r.state);
    const overdue = open && (r.dueAt.getTime() < now.getTime() || (confirming(r) && r.receivedAt.getTime() + this.confirmationTimeoutMs < now.getTime()));
    const heard = new Set(r.confirmations.map((c) => c.service));
    const pending = confirming(r) ? this.expected.filter((s) => !heard.has(s)) : [];
    return { ...r, overdue, pending, artifact: r.artifact === null ? null : this.artifactView(r.artifact, now) };
  }
}

/** A forget or a change done here and waiting for the downstream services' receipts. */
const confirming = (r: PrivacyRequestRecord): boolean => (r.type === 'forget' && r.state === 'anonymized') || r.state === 'applied';
