import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError, USER_NOT_FOUND } from '../errors.js';
import { anonymizedEventFor } from '../events/cloudevents.js';
import { ANONYMIZED_SUBJECT } from '../events/subjects.js';
import { lockKey, lockKeysStatement } from '../store/advisory-lock.js';
import { type Session, inSession, sessionOf } from '../store/session.js';
import { enqueueEventPart } from '../store/outbox.js';
import { type PrivacyRequestRecord, type TableRows, insertedRecord, ledger } from '../store/ledger.js';
import { ledgerSql } from '../store/ledger-sql.js';
import { auditPart, writeAudit } from './audit.js';
import type { Column } from './facts.js';
import { PLATFORM_OWNER_PROTECTED, authorizeForget } from './authorization.js';
import { type EngineOptions, EnginePart, KEY_REUSED, REQUEST_NOT_FOUND, UUID, idempotencyLock } from './engine-part.js';
import { ROWS_AFFECTED, type TrailingWrite, applyForget, applyWrites } from './forget-run.js';
import { subjectLockKey } from './locks.js';
import type { Principal } from './principal.js';
import { received } from './due-date.js';
import { checkReason, optionalId, requireId } from './validation.js';

export const FORGET_MESSAGE = 'User data has been anonymized. PII has been removed while preserving audit logs.';
const scheduledMessage = (at: Date, requestId: string): string =>
  `Your erasure is scheduled for ${at.toISOString()}; until then you can cancel it (privacy request ${requestId})`;

export interface ForgetResult {
  readonly userId: string;
  readonly requestId: string;
  readonly message: string;
  readonly rowsAffected: readonly TableRows[];
  readonly replayed: boolean;
  /** A person's own erasure: when it will run (nothing was changed yet). */
  readonly scheduledFor?: Date | undefined;
  /** The ledger entry as this call wrote it, when it anonymized (no receipt can be in it yet). */
  readonly written?: PrivacyRequestRecord | undefined;
}

interface ErasureInput {
  readonly requestId: string;
  readonly userId: string;
  readonly actorId: string;
  readonly reason: string;
  readonly requestedBy: string | undefined;
  readonly at: Date;
}

/**
 * ForgetUser: the subject anonymized in one transaction, with the outbox event that tells the
 * copies. A person's own erasure is scheduled after a grace period instead, carried out by
 * runScheduled (any replica, exactly once) unless cancelled before.
 */
export class Erasure extends EnginePart {
  private readonly expected: readonly string[];
  private readonly graceMs: number;

  constructor(opts: EngineOptions) {
    super(opts);
    this.expected = opts.expectedServices ?? [];
    this.graceMs = opts.selfErasureGraceMs ?? 7 * 86_400_000;
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

    const request = { userId, reason, key, requestedBy };
    const attempt = (pipelined: boolean) => this.db(() => inSession(this.knex, (s) => this.forgetIn(s, actor, request), { pipelined }));
    let result = await attempt(true);
    if (result === IN_KNEX_TRANSACTION) result = await attempt(false);
    if (result === IN_KNEX_TRANSACTION) throw new Error('a forget asked twice for a knex transaction');
    if (!result.replayed && result.scheduledFor === undefined) this.opts.onEventEnqueued?.();
    return result;
  }

  /**
   * One forget in the session's transaction: both locks, then everything decided on, read in one
   * statement after the locks are held (sent together: one round trip on PostgreSQL), then the
   * forget and its records written with the COMMIT (the second).
   */
  private async forgetIn(
    s: Session,
    actor: Principal,
    { userId, reason, key, requestedBy }: { userId: string; reason: string; key: string; requestedBy: string | undefined },
  ): Promise<ForgetResult | typeof IN_KNEX_TRANSACTION> {
    const self = actor.role === 'user' && actor.id === userId;
    // The actor's own facts matter only to someone who is neither the subject nor a platform principal.
    const read = this.facts.forDecision(userId, self || actor.role === 'platform' ? undefined : actor.id, [
      ledgerSql.byIdempotencyKey(key),
      erasedColumn(userId),
    ]);
    const [, rows] = await s.run([lockKeysStatement([idempotencyLock(key), subjectLockKey(userId)]), read.statement]);
    const facts = read.parse(rows ?? []);
    const prior = ledgerSql.record(facts.extra[0]);
    if (prior !== undefined) return replay(prior, actor, userId);

    // The rules before existence, as for exports: no answer tells an unauthorized caller who
    // exists. A person may always ask for their own erasure (platform owners excepted).
    if (self && facts.subject.isPlatformOwner) throw new PermissionDeniedError(PLATFORM_OWNER_PROTECTED);
    if (!self) authorizeForget(actor, facts.subject, facts.actor);
    if (!facts.subjectExists) throw new NotFoundError(USER_NOT_FOUND);

    const at = this.now();
    if (self && this.graceMs > 0) {
      // Scheduling writes through knex's builders: from a pipelined connection, start again in a knex transaction.
      if (s.trx === undefined) return IN_KNEX_TRANSACTION;
      return this.schedule(s.trx, { requestId: randomUUID(), userId, actorId: actor.id, reason, requestedBy, at }, key);
    }

    const requestId = randomUUID();
    const waiting = this.expected.length > 0;
    const entry = {
      id: requestId,
      type: 'forget',
      subjectId: userId,
      requester: actor.id,
      requestedBy,
      reason,
      state: waiting ? 'anonymized' : 'completed',
      idempotencyKey: key,
      ...received(at),
      completedAt: waiting ? undefined : at,
    } as const;
    const erasure = { requestId, userId, actorId: actor.id, reason, requestedBy, at };
    const rowsAffected = await this.erase(s, erasure, facts.extra[1] === true, (sql) => ledgerSql.insert(entry, sql));
    return { userId, requestId, message: FORGET_MESSAGE, rowsAffected, replayed: false, written: insertedRecord({ ...entry, rowsAffected }) };
  }

  /**
   * Anonymizes inside the caller's transaction (the subject's lock held): the data map's forget
   * and Lethe's own tables, the erasure record, the audit entry, the outbox event and the ledger
   * entry (`ledgerEntry`, given the SQL of the rows affected), in as few statements as the plan
   * allows. A subject erased before is left as it is; the event goes out again (copies may have
   * come back).
   */
  private async erase(s: Session, e: ErasureInput, erased: boolean, ledgerEntry: (rowsAffected: string) => TrailingWrite): Promise<TableRows[]> {
    // The erasure's entry is the reference's {"reason": …}; a repeated forget names its request.
    // Written after the forget scrubbed the subject's earlier entries, so it keeps its reason.
    const onBehalf = e.requestedBy === undefined ? {} : { requested_by: e.requestedBy };
    const audit = auditPart(this.map, {
      eventType: erased ? 'user_already_anonymized' : 'user_anonymized',
      actorId: e.actorId,
      targetId: e.userId,
      details: erased ? { reason: e.reason, request_id: e.requestId, ...onBehalf } : { reason: e.reason, ...onBehalf },
      timestamp: e.at,
    });
    const event = anonymizedEventFor({ source: this.opts.eventSource ?? 'lethe', userId: e.userId, requestId: e.requestId, anonymizedAt: e.at });
    const writes: TrailingWrite[] = [
      ...(erased ? [] : [erasureRecord(e), consentsWithdrawn(e)]),
      ...(audit === undefined ? [] : [audit]),
      enqueueEventPart({ id: event.id, subject: ANONYMIZED_SUBJECT, payload: JSON.stringify(event) }, e.at),
      ledgerEntry(ROWS_AFFECTED),
    ];
    const rowsAffected = erased
      ? await applyWrites(s, [], writes, { commit: true })
      : await applyForget(s, this.opts.forgetPlan, e.userId, { timestamp: e.at.getTime(), requestId: e.requestId }, writes, { commit: true });
    this.opts.logger.info({ requestId: e.requestId, subjectId: e.userId, actor: e.actorId, alreadyErased: erased }, 'user anonymized');
    return rowsAffected;
  }

  /** A person's own erasure, accepted now and carried out after the grace period. One per subject at a time. */
  private async schedule(trx: Knex.Transaction, e: ErasureInput, key: string): Promise<ForgetResult> {
    const pending = await ledger.scheduledForget(trx, e.userId);
    if (pending !== undefined && pending.scheduledFor !== null) {
      return {
        userId: e.userId,
        requestId: pending.id,
        message: scheduledMessage(pending.scheduledFor, pending.id),
        rowsAffected: [],
        replayed: false,
        scheduledFor: pending.scheduledFor,
      };
    }
    const scheduledFor = new Date(e.at.getTime() + this.graceMs);
    await ledger.insert(trx, {
      id: e.requestId,
      type: 'forget',
      subjectId: e.userId,
      requester: e.actorId,
      requestedBy: e.requestedBy,
      reason: e.reason,
      state: 'scheduled',
      idempotencyKey: key,
      ...received(e.at),
      scheduledFor,
    });
    await writeAudit(trx, this.map, {
      eventType: 'user_erasure_scheduled',
      actorId: e.actorId,
      targetId: e.userId,
      details: { request_id: e.requestId, reason: e.reason, scheduled_for: scheduledFor.toISOString() },
      timestamp: e.at,
    });
    this.opts.logger.info({ requestId: e.requestId, subjectId: e.userId, scheduledFor }, 'erasure scheduled');
    return { userId: e.userId, requestId: e.requestId, message: scheduledMessage(scheduledFor, e.requestId), rowsAffected: [], replayed: false, scheduledFor };
  }

  /**
   * Carries out the scheduled erasures whose time has come, one transaction each: the row's lock
   * (other replicas skip it) and its state change commit with the anonymization, so each runs
   * exactly once, on time after restarts. Returns how many ran.
   */
  async runScheduled(): Promise<number> {
    let ran = 0;
    for (;;) {
      const done = await this.db(() =>
        this.knex.transaction(async (trx) => {
          const at = this.now();
          const [r] = await ledger.lockDue(trx, at, 1);
          if (r === undefined) return false;
          await lockKey(trx, subjectLockKey(r.subjectId));
          if (!(await this.facts.subjectExists(trx, r.subjectId))) {
            await ledger.finish(trx, r.id, 'failed', at, USER_NOT_FOUND);
          } else if ((await this.facts.subject(trx, r.subjectId)).isPlatformOwner) {
            await ledger.finish(trx, r.id, 'failed', at, PLATFORM_OWNER_PROTECTED);
          } else {
            const erased = (await trx('lethe_erasures').where({ subject_id: r.subjectId }).first()) !== undefined;
            const state = this.expected.length > 0 ? 'anonymized' : 'completed';
            await this.erase(
              sessionOf(trx),
              { requestId: r.id, userId: r.subjectId, actorId: r.requester, reason: r.reason, requestedBy: r.requestedBy ?? undefined, at },
              erased,
              (rowsAffected) => ledgerSql.carriedOut(r.id, state, at, rowsAffected),
            );
          }
          return true;
        }),
      );
      if (!done) break;
      ran += 1;
    }
    if (ran > 0) this.opts.onEventEnqueued?.();
    return ran;
  }

  /** Cancels a scheduled request (CancelPrivacyRequest): the requester, the subject or a platform principal. */
  async cancelRequest(actor: Principal, input: { id: string; reason: string }): Promise<void> {
    if (!UUID.test(input.id)) throw new InvalidArgumentError('id must be a privacy request id (a UUID)');
    const reason = checkReason(input.reason, { required: false });
    const r = await this.db(() => ledger.get(this.knex, input.id));
    if (r === undefined || !(await this.mayRead(actor, r))) throw new NotFoundError(REQUEST_NOT_FOUND);
    await this.db(() =>
      this.knex.transaction(async (trx) => {
        // Waits for a scheduler carrying it out right now, then sees what it did.
        const current = await ledger.lock(trx, input.id);
        if (current?.state !== 'scheduled')
          throw new FailedPreconditionError(`Only a scheduled request can be cancelled; this one is ${current?.state ?? 'gone'}`);
        const at = this.now();
        await ledger.cancel(trx, current.id, at);
        await writeAudit(trx, this.map, {
          eventType: 'user_erasure_cancelled',
          actorId: actor.id,
          targetId: current.subjectId,
          details: { request_id: current.id, reason },
          timestamp: at,
        });
      }),
    );
  }
}

/** forgetIn's answer when it must run in a knex transaction (a person's own erasure is scheduled through knex). */
const IN_KNEX_TRANSACTION = Symbol('in a knex transaction');

/** Whether the subject was erased before: a column read with the forget's facts. */
function erasedColumn(subjectId: string): Column {
  return { sql: 'EXISTS (SELECT 1 FROM "lethe_erasures" WHERE "subject_id" = ?)', bindings: [subjectId] };
}

/** The record that the subject is erased, so that a second forget changes nothing. */
/** Consent records stay as proof (see lethe-tables.ts); none stays in force. */
function consentsWithdrawn(e: ErasureInput): TrailingWrite {
  return {
    table: 'lethe_consents',
    sql: `UPDATE "lethe_consents" SET "withdrawn_at" = ?, "withdrawn_by" = ?, "withdrawn_source" = 'erasure' WHERE "subject_id" = ? AND "withdrawn_at" IS NULL`,
    bindings: [e.at, e.actorId, e.userId],
  };
}

function erasureRecord(e: ErasureInput): TrailingWrite {
  return {
    table: 'lethe_erasures',
    sql: 'INSERT INTO "lethe_erasures" ("subject_id", "request_id", "anonymized_at") VALUES (?, ?, ?)',
    bindings: [e.userId, e.requestId, e.at],
  };
}

function replay(prior: PrivacyRequestRecord, actor: Principal, userId: string): ForgetResult {
  if (prior.type !== 'forget' || prior.subjectId !== userId || prior.requester !== actor.id) {
    throw new FailedPreconditionError(KEY_REUSED);
  }
  if (prior.state === 'scheduled' && prior.scheduledFor !== null) {
    return {
      userId,
      requestId: prior.id,
      message: scheduledMessage(prior.scheduledFor, prior.id),
      rowsAffected: [],
      replayed: true,
      scheduledFor: prior.scheduledFor,
    };
  }
  return { userId, requestId: prior.id, message: FORGET_MESSAGE, rowsAffected: prior.rowsAffected, replayed: true };
}
