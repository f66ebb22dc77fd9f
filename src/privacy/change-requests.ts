import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { FailedPreconditionError, NotFoundError, USER_NOT_FOUND } from '../errors.js';
import { lockKey } from '../store/advisory-lock.js';
import { enqueueEventPart } from '../store/outbox.js';
import { type PrivacyRequestRecord, type RequestDetails, type RequestType, type TableRows, ledger } from '../store/ledger.js';
import { type AuditEventType, writeAudit } from './audit.js';
import type { ActorFacts, SubjectFacts } from './authorization.js';
import { received } from './due-date.js';
import { EnginePart, KEY_REUSED, idempotencyLock } from './engine-part.js';
import { subjectLockKey } from './locks.js';
import type { Principal } from './principal.js';

const ERASED_SUBJECT = 'User data has been anonymized; it can no longer be rectified or have processing choices changed';

/** A change request as a front end asked for it, checked. */
export interface ChangeInput {
  /** Undefined: recorded but not a request of the person's (a consent given): no ledger entry. */
  readonly type: RequestType | undefined;
  readonly userId: string;
  readonly reason: string;
  /** Undefined: no idempotency (a consent withdrawal, which is idempotent by nature). */
  readonly idempotencyKey: string | undefined;
  readonly requestedBy?: string | undefined;
}

/** What the change did in the primary database, and what to record and tell the services. */
export interface ChangeDone {
  readonly rowsAffected?: readonly TableRows[];
  readonly details: RequestDetails;
  readonly audit: { readonly eventType: AuditEventType; readonly details: Readonly<Record<string, unknown>> };
  /** The outbox event; undefined when nothing changed (then no ledger entry either). */
  readonly event: { readonly subject: string; readonly id: string; readonly payload: string } | undefined;
}

export interface ChangeContext {
  readonly requestId: string;
  readonly at: Date;
  /** The subject's next change version (events carry it; services apply only newer ones). */
  readonly version: () => Promise<number>;
}

export interface ChangeResult {
  /** Undefined when the call changed nothing (e.g. withdrawing a consent never given). */
  readonly requestId: string | undefined;
  readonly replayed: boolean;
}

/**
 * What rectification and processing choices share: one transaction per change that takes the
 * idempotency key's and the subject's locks, checks who may change what and that the subject is
 * not erased, makes the change, and records it in the ledger (`applied` until every expected
 * service confirms), the audit log and the outbox, all committing together.
 */
export abstract class ChangeRequests extends EnginePart {
  protected async change(
    actor: Principal,
    input: ChangeInput,
    authorize: (subject: SubjectFacts, facts: ActorFacts) => void,
    work: (trx: Knex.Transaction, ctx: ChangeContext) => Promise<ChangeDone>,
  ): Promise<ChangeResult> {
    const result = await this.db(() =>
      this.knex.transaction(async (trx): Promise<ChangeResult> => {
        const key = input.idempotencyKey;
        if (key !== undefined) {
          await lockKey(trx, idempotencyLock(key));
          const prior = await ledger.byIdempotencyKey(trx, key);
          if (prior !== undefined) return replay(prior, actor, input);
        }
        await lockKey(trx, subjectLockKey(input.userId));
        authorize(await this.facts.subject(trx, input.userId), await this.facts.actor(trx, actor.id));
        if (!(await this.facts.subjectExists(trx, input.userId))) throw new NotFoundError(USER_NOT_FOUND);
        if ((await trx('lethe_erasures').where({ subject_id: input.userId }).first()) !== undefined) throw new FailedPreconditionError(ERASED_SUBJECT);

        const at = this.now();
        const requestId = randomUUID();
        const done = await work(trx, { requestId, at, version: () => nextVersion(trx, input.userId) });
        if (done.event === undefined) return { requestId: undefined, replayed: false };
        const waiting = (this.opts.expectedServices ?? []).length > 0;
        if (input.type !== undefined)
          await ledger.insert(trx, {
            id: requestId,
            type: input.type,
            subjectId: input.userId,
            requester: actor.id,
            requestedBy: input.requestedBy,
            reason: input.reason,
            state: waiting ? 'applied' : 'completed',
            idempotencyKey: key,
            ...received(at),
            completedAt: waiting ? undefined : at,
            rowsAffected: done.rowsAffected,
            details: done.details,
          });
        const onBehalf = input.requestedBy === undefined ? {} : { requested_by: input.requestedBy };
        await writeAudit(trx, this.map, {
          eventType: done.audit.eventType,
          actorId: actor.id,
          targetId: input.userId,
          details: { request_id: requestId, ...done.audit.details, reason: input.reason, ...onBehalf },
          timestamp: at,
        });
        const outbox = enqueueEventPart(done.event, at);
        await trx.raw(outbox.sql, outbox.bindings);
        this.opts.logger.info({ requestId, subjectId: input.userId, type: input.type, actor: actor.id }, 'change applied');
        return { requestId, replayed: false };
      }),
    );
    if (result.requestId !== undefined && !result.replayed) this.opts.onEventEnqueued?.();
    return result;
  }
}

async function nextVersion(trx: Knex.Transaction, subjectId: string): Promise<number> {
  const res = (await trx.raw(
    'INSERT INTO lethe_change_versions (subject_id, version) VALUES (?, 1) ON CONFLICT (subject_id) DO UPDATE SET version = lethe_change_versions.version + 1 RETURNING version',
    [subjectId],
  )) as { rows: Array<{ version: number | string }> };
  return Number(res.rows[0]?.version ?? 1);
}

function replay(prior: PrivacyRequestRecord, actor: Principal, input: ChangeInput): ChangeResult {
  if (input.type === undefined || prior.type !== input.type || prior.subjectId !== input.userId || prior.requester !== actor.id)
    throw new FailedPreconditionError(KEY_REUSED);
  return { requestId: prior.id, replayed: true };
}
