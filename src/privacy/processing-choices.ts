import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import { type ConsentState, type PurposeFlags, processingEventFor } from '../events/cloudevents.js';
import { PROCESSING_SUBJECT } from '../events/subjects.js';
import { authorizeChoices, authorizeExport } from './authorization.js';
import { type ChangeContext, type ChangeDone, type ChangeResult, ChangeRequests } from './change-requests.js';
import type { Principal } from './principal.js';
import { checkReason, optionalId, requireId } from './validation.js';

export type ProcessingBasis = 'restriction' | 'objection';

/** A restriction or objection asked for, or lifted. */
export interface ChoiceInput {
  readonly userId: string;
  readonly purposes: readonly string[];
  readonly basis: ProcessingBasis;
  readonly reason: string;
  readonly idempotencyKey: string;
  readonly requestedBy?: string;
}

export interface ConsentRecord {
  readonly id: string;
  readonly userId: string;
  readonly purpose: string;
  readonly textVersion: string;
  readonly textSha256: string | null;
  readonly source: string;
  readonly givenAt: Date;
  readonly givenBy: string;
  readonly withdrawnAt: Date | null;
  readonly withdrawnBy: string | null;
  readonly withdrawnSource: string | null;
}

export interface ChoicesResult extends ChangeResult {
  /** The subject's processing choices per purpose after the call. */
  readonly purposes: readonly PurposeFlags[];
}

const SOURCE = /^[a-z0-9][a-z0-9._:/-]{0,63}$/;
const TEXT_VERSION = /^[\x21-\x7e]{1,128}$/;
const SHA256 = /^[0-9a-f]{64}$/;

interface ConsentRow {
  id: string;
  subject_id: string;
  purpose: string;
  text_version: string;
  text_sha256: string | null;
  source: string;
  given_at: Date | string;
  given_by: string;
  withdrawn_at: Date | string | null;
  withdrawn_by: string | null;
  withdrawn_source: string | null;
}

/**
 * Restriction (Art. 18), objection (Art. 21) and consent (Art. 7) per purpose of the data map.
 * Each change is kept with who and when (lifting or withdrawing stamps the row), recorded in the
 * ledger, and published as the subject's whole current state per purpose, so that every service
 * keeps the same flags whatever order the events reach it in.
 */
export class ProcessingChoices extends ChangeRequests {
  async restrict(actor: Principal, input: ChoiceInput): Promise<ChoicesResult> {
    const { userId, purposes, reason, key, requestedBy } = this.checkChoice(input);
    const r = await this.change(
      actor,
      { type: 'restrict', userId, reason, idempotencyKey: key, requestedBy },
      (_s, facts) => authorizeChoices(actor, userId, facts),
      async (trx, ctx) => {
        const active = new Set(
          (await trx('lethe_processing_limits').where({ subject_id: userId, basis: input.basis }).whereNull('lifted_at').pluck('purpose')) as string[],
        );
        const added = purposes.filter((p) => !active.has(p));
        if (added.length > 0) {
          await trx('lethe_processing_limits').insert(
            added.map((purpose) => ({
              id: randomUUID(),
              subject_id: userId,
              purpose,
              basis: input.basis,
              since: ctx.at,
              requested_by: actor.id,
              request_id: ctx.requestId,
            })),
          );
        }
        return this.done(trx, userId, ctx, { purposes, basis: input.basis }, 'processing_restricted');
      },
    );
    return { ...r, purposes: await this.db(() => this.flags(this.knex, userId)) };
  }

  async lift(actor: Principal, input: ChoiceInput): Promise<ChoicesResult> {
    const { userId, purposes, reason, key, requestedBy } = this.checkChoice(input);
    const r = await this.change(
      actor,
      { type: 'lift_restriction', userId, reason, idempotencyKey: key, requestedBy },
      (_s, facts) => authorizeChoices(actor, userId, facts),
      async (trx, ctx) => {
        await trx('lethe_processing_limits')
          .where({ subject_id: userId, basis: input.basis })
          .whereIn('purpose', purposes)
          .whereNull('lifted_at')
          .update({ lifted_at: ctx.at, lifted_by: actor.id, lifted_request_id: ctx.requestId });
        return this.done(trx, userId, ctx, { purposes, basis: input.basis }, 'processing_restriction_lifted');
      },
    );
    return { ...r, purposes: await this.db(() => this.flags(this.knex, userId)) };
  }

  /** Records a consent; the same purpose and text version already in force is returned as it is. */
  async recordConsent(
    actor: Principal,
    input: { userId: string; purpose: string; textVersion: string; textSha256: string; source: string },
  ): Promise<ChoicesResult & { consent: ConsentRecord; alreadyGiven: boolean }> {
    const userId = requireId(input.userId, 'user_id');
    const [purpose] = this.checkPurposes([input.purpose], { required: true });
    if (!TEXT_VERSION.test(input.textVersion)) throw new InvalidArgumentError('text_version is required: 1 to 128 printable ASCII characters');
    const sha = input.textSha256.toLowerCase();
    if (sha !== '' && !SHA256.test(sha)) throw new InvalidArgumentError('text_sha256 must be 64 hex digits (the SHA-256 of the text agreed to)');
    const source = checkSource(input.source);
    let consentId = '';
    let alreadyGiven = false;
    const r = await this.change(
      actor,
      { type: undefined, userId, reason: '', idempotencyKey: undefined },
      (_s, facts) => authorizeChoices(actor, userId, facts),
      async (trx, ctx) => {
        const current = (await trx('lethe_consents').where({ subject_id: userId, purpose }).whereNull('withdrawn_at').first()) as ConsentRow | undefined;
        if (current !== undefined && current.text_version === input.textVersion && (current.text_sha256 ?? '') === sha) {
          consentId = current.id;
          alreadyGiven = true;
          return { details: {}, audit: { eventType: 'consent_given', details: {} }, event: undefined };
        }
        if (current !== undefined) {
          await trx('lethe_consents').where({ id: current.id }).update({ withdrawn_at: ctx.at, withdrawn_by: actor.id, withdrawn_source: 'superseded' });
        }
        consentId = ctx.requestId;
        await trx('lethe_consents').insert({
          id: consentId,
          subject_id: userId,
          purpose,
          text_version: input.textVersion,
          text_sha256: sha === '' ? null : sha,
          source,
          given_at: ctx.at,
          given_by: actor.id,
        });
        return this.done(trx, userId, ctx, { purposes: [purpose ?? ''] }, 'consent_given', { consent_id: consentId, text_version: input.textVersion, source });
      },
    );
    const consent = (await this.db(() => this.knex('lethe_consents').where({ id: consentId }).first())) as ConsentRow;
    return { ...r, consent: toConsent(consent), alreadyGiven, purposes: await this.db(() => this.flags(this.knex, userId)) };
  }

  /** Withdraws consent for the purposes named (all in force when none is), in one call. */
  async withdrawConsent(
    actor: Principal,
    input: { userId: string; purposes: readonly string[]; source: string; reason: string },
  ): Promise<ChoicesResult & { withdrawn: ConsentRecord[] }> {
    const userId = requireId(input.userId, 'user_id');
    const purposes = this.checkPurposes(input.purposes, { required: false });
    const source = checkSource(input.source);
    const reason = checkReason(input.reason, { required: false });
    let ids: string[] = [];
    const r = await this.change(
      actor,
      { type: 'withdraw_consent', userId, reason, idempotencyKey: undefined },
      (_s, facts) => authorizeChoices(actor, userId, facts),
      async (trx, ctx) => {
        const q = trx('lethe_consents').where({ subject_id: userId }).whereNull('withdrawn_at');
        if (purposes.length > 0) q.whereIn('purpose', purposes);
        const rows = (await q.clone().select('id', 'purpose')) as Array<{ id: string; purpose: string }>;
        if (rows.length === 0) return { details: {}, audit: { eventType: 'consent_withdrawn', details: {} }, event: undefined };
        ids = rows.map((row) => row.id);
        await trx('lethe_consents').whereIn('id', ids).update({ withdrawn_at: ctx.at, withdrawn_by: actor.id, withdrawn_source: source });
        const withdrawnPurposes = [...new Set(rows.map((row) => row.purpose))].sort();
        return this.done(trx, userId, ctx, { purposes: withdrawnPurposes }, 'consent_withdrawn', { source });
      },
    );
    const withdrawn = ids.length === 0 ? [] : ((await this.db(() => this.knex('lethe_consents').whereIn('id', ids).orderBy('purpose'))) as ConsentRow[]);
    return { ...r, withdrawn: withdrawn.map(toConsent), purposes: await this.db(() => this.flags(this.knex, userId)) };
  }

  /** Every consent record of the subject and the current choices (ListConsents): allowed as an export is. */
  async listConsents(actor: Principal, input: { userId: string }): Promise<{ consents: ConsentRecord[]; purposes: PurposeFlags[] }> {
    const userId = requireId(input.userId, 'user_id');
    return this.db(async () => {
      authorizeExport(actor, userId, await this.facts.subject(this.knex, userId), await this.facts.actor(this.knex, actor.id));
      const rows = (await this.knex('lethe_consents')
        .where({ subject_id: userId })
        .orderBy([{ column: 'given_at' }, { column: 'id' }])) as ConsentRow[];
      return { consents: rows.map(toConsent), purposes: await this.flags(this.knex, userId) };
    });
  }

  /** The subject's current choices for every purpose of the data map. */
  private async flags(db: Knex | Knex.Transaction, userId: string): Promise<PurposeFlags[]> {
    const limits = (await db('lethe_processing_limits').where({ subject_id: userId }).whereNull('lifted_at').select('purpose', 'basis')) as Array<{
      purpose: string;
      basis: ProcessingBasis;
    }>;
    const consents = (await db('lethe_consents').where({ subject_id: userId }).select('purpose', 'withdrawn_at')) as Array<{
      purpose: string;
      withdrawn_at: unknown;
    }>;
    return this.map.purposes.map((purpose) => {
      const mine = consents.filter((c) => c.purpose === purpose);
      const consent: ConsentState = mine.some((c) => c.withdrawn_at === null) ? 'given' : mine.length > 0 ? 'withdrawn' : 'none';
      return {
        purpose,
        restricted: limits.some((l) => l.purpose === purpose && l.basis === 'restriction'),
        objected: limits.some((l) => l.purpose === purpose && l.basis === 'objection'),
        consent,
      };
    });
  }

  private async done(
    trx: Knex.Transaction,
    userId: string,
    ctx: ChangeContext,
    details: { purposes: string[]; basis?: ProcessingBasis },
    eventType: ChangeDone['audit']['eventType'],
    extra: Record<string, unknown> = {},
  ): Promise<ChangeDone> {
    const event = processingEventFor(this.opts.eventSource ?? 'lethe', {
      user_id: userId,
      request_id: ctx.requestId,
      changed_at: ctx.at.toISOString(),
      version: await ctx.version(),
      purposes: await this.flags(trx, userId),
    });
    return {
      details,
      audit: { eventType, details: { ...details, ...extra } },
      event: { id: event.id, subject: PROCESSING_SUBJECT, payload: JSON.stringify(event) },
    };
  }

  private checkChoice(input: ChoiceInput) {
    return {
      userId: requireId(input.userId, 'user_id'),
      purposes: this.checkPurposes(input.purposes, { required: true }),
      reason: checkReason(input.reason, { required: false }),
      key: requireId(input.idempotencyKey, 'idempotency_key'),
      requestedBy: optionalId(input.requestedBy ?? '', 'requested_by'),
    };
  }

  private checkPurposes(purposes: readonly string[], opts: { required: boolean }): string[] {
    const known = this.map.purposes;
    if (known.length === 0) throw new FailedPreconditionError('the data map lists no purposes: add purposes: [marketing, …] to it');
    if (opts.required && purposes.length === 0) throw new InvalidArgumentError(`purposes is required: one or more of ${known.join(', ')}`);
    for (const p of purposes) {
      if (!known.includes(p)) {
        const shown = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(p) ? `'${p}'` : 'a purpose';
        throw new InvalidArgumentError(`unknown purpose ${shown}: purposes are ${known.join(', ')}`);
      }
    }
    return [...new Set(purposes)].sort();
  }
}

function checkSource(source: string): string {
  if (!SOURCE.test(source)) throw new InvalidArgumentError('source is required: 1 to 64 of a-z, 0-9, . _ : / - (where the choice was made, e.g. web-signup)');
  return source;
}

const date = (v: Date | string | null): Date | null => (v === null ? null : new Date(v));

function toConsent(r: ConsentRow): ConsentRecord {
  return {
    id: r.id,
    userId: r.subject_id,
    purpose: r.purpose,
    textVersion: r.text_version,
    textSha256: r.text_sha256,
    source: r.source,
    givenAt: new Date(r.given_at),
    givenBy: r.given_by,
    withdrawnAt: date(r.withdrawn_at),
    withdrawnBy: r.withdrawn_by,
    withdrawnSource: r.withdrawn_source,
  };
}
