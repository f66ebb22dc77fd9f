import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { type ListFilter, type PrivacyRequestRecord, type RequestState, ledger } from '../store/ledger.js';
import type { Principal } from './principal.js';
import { requireId } from './validation.js';
import { type EngineOptions, EnginePart, REQUEST_NOT_FOUND, UUID } from './engine-part.js';

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
}
