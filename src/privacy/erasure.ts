import { randomUUID } from 'node:crypto';
import { FailedPreconditionError, NotFoundError, USER_NOT_FOUND } from '../errors.js';
import { anonymizedEventFor } from '../events/cloudevents.js';
import { ANONYMIZED_SUBJECT } from '../events/subjects.js';
import { lockKey } from '../store/advisory-lock.js';
import { enqueueEvent } from '../store/outbox.js';
import { type PrivacyRequestRecord, type TableRows, ledger } from '../store/ledger.js';
import { writeAudit } from './audit.js';
import { authorizeForget } from './authorization.js';
import { applyForget } from './forget.js';
import { subjectLockKey } from './locks.js';
import type { Principal } from './principal.js';
import { checkReason, optionalId, requireId } from './validation.js';
import { type EngineOptions, EnginePart, idempotencyLock, KEY_REUSED } from './engine-part.js';

export const FORGET_MESSAGE = 'User data has been anonymized. PII has been removed while preserving audit logs.';

export interface ForgetResult {
  readonly userId: string;
  readonly requestId: string;
  readonly message: string;
  readonly rowsAffected: readonly TableRows[];
  readonly replayed: boolean;
}

/** ForgetUser: the subject anonymized in one transaction, with the outbox event that tells the copies. */
export class Erasure extends EnginePart {
  private readonly expected: readonly string[];

  constructor(opts: EngineOptions) {
    super(opts);
    this.expected = opts.expectedServices ?? [];
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
}

function replay(prior: PrivacyRequestRecord, actor: Principal, userId: string): ForgetResult {
  if (prior.type !== 'forget' || prior.subjectId !== userId || prior.requester !== actor.id) {
    throw new FailedPreconditionError(KEY_REUSED);
  }
  return { userId, requestId: prior.id, message: FORGET_MESSAGE, rowsAffected: prior.rowsAffected, replayed: true };
}
