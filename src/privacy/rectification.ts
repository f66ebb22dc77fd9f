import { rectifiedEventFor } from '../events/cloudevents.js';
import { RECTIFIED_SUBJECT } from '../events/subjects.js';
import { authorizeRectify } from './authorization.js';
import { type ChangeResult, ChangeRequests } from './change-requests.js';
import type { EngineOptions } from './engine-part.js';
import type { Principal } from './principal.js';
import { type RectifyPlan, applyRectify, checkRequestedChanges, compileRectify } from './rectify.js';
import { checkReason, optionalId, requireId } from './validation.js';

/** What a sidecar is given to apply a rectification: the new values, only to a service that must still apply them. */
export type PendingValues =
  | { readonly kind: 'values'; readonly subjectId: string; readonly values: ReadonlyArray<[string, string]> }
  | { readonly kind: 'gone'; readonly reason: string };

/**
 * RectifyUser (Art. 16, 19): the new values go into the primary database and wait, in
 * lethe_rectifications, for every expected service to fetch them over NATS (the event says only
 * which fields changed); they are cleared once the request is settled, and by a forget.
 */
export class Rectification extends ChangeRequests {
  private readonly plan: RectifyPlan;

  constructor(opts: EngineOptions) {
    super(opts);
    this.plan = compileRectify(opts.dataMap);
  }

  async rectifyUser(
    actor: Principal,
    input: { userId: string; changes: Readonly<Record<string, string>>; reason: string; idempotencyKey: string; requestedBy?: string },
  ): Promise<ChangeResult> {
    const userId = requireId(input.userId, 'user_id');
    const reason = checkReason(input.reason, { required: false });
    const key = requireId(input.idempotencyKey, 'idempotency_key');
    const requestedBy = optionalId(input.requestedBy ?? '', 'requested_by');
    const values = checkRequestedChanges(this.plan, input.changes);
    const fields = values.map(([f]) => f);
    const waiting = (this.opts.expectedServices ?? []).length > 0;
    return this.change(
      actor,
      { type: 'rectify', userId, reason, idempotencyKey: key, requestedBy },
      (subject, facts) => authorizeRectify(actor, userId, subject, facts),
      async (trx, ctx) => {
        const rowsAffected = await applyRectify(trx, this.plan, userId, values);
        await trx('lethe_rectifications').insert({
          request_id: ctx.requestId,
          subject_id: userId,
          fields: JSON.stringify(fields),
          pending_values: waiting ? JSON.stringify(Object.fromEntries(values)) : null,
        });
        const event = rectifiedEventFor(this.opts.eventSource ?? 'lethe', {
          user_id: userId,
          request_id: ctx.requestId,
          fields,
          rectified_at: ctx.at.toISOString(),
          version: await ctx.version(),
        });
        return {
          rowsAffected,
          details: { fields },
          audit: { eventType: 'user_rectified', details: { fields } },
          event: { id: event.id, subject: RECTIFIED_SUBJECT, payload: JSON.stringify(event) },
        };
      },
    );
  }

  /**
   * The new values of a rectification, for a sidecar of `service` that has not confirmed it yet.
   * Settled requests (every service confirmed, one failed) and erased subjects have none left.
   */
  async pendingValues(requestId: string, service: string): Promise<PendingValues> {
    return this.db(async () => {
      const row = (await this.knex('lethe_rectifications as r')
        .join('lethe_privacy_requests as p', 'p.id', 'r.request_id')
        .where('r.request_id', requestId)
        .first('r.subject_id', 'r.pending_values', 'p.state')) as { subject_id: string; pending_values: unknown; state: string } | undefined;
      if (row === undefined) return { kind: 'gone', reason: 'unknown rectification' };
      if (row.pending_values === null) return { kind: 'gone', reason: row.state === 'applied' ? 'the subject was erased' : 'the rectification is settled' };
      if (!(this.opts.expectedServices ?? []).includes(service)) return { kind: 'gone', reason: `${service} is not an expected service` };
      const values = (typeof row.pending_values === 'string' ? JSON.parse(row.pending_values) : row.pending_values) as Record<string, string>;
      return { kind: 'values', subjectId: row.subject_id, values: Object.entries(values) };
    });
  }
}
