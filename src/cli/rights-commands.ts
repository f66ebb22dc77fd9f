import { randomUUID } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { type Consent, ConsentState, ProcessingBasis, type PurposeState } from '../gen/lethe/privacy/v1/privacy.js';
import { type ClientFlags, iso, toJson, withClient } from './client-commands.js';

/** `lethe rectify`, `lethe restrict` and `lethe consent …`: one JSON document on standard output each. */

const print = (value: unknown) => console.log(JSON.stringify(value, null, 2));

export async function rectifyCommand(userId: string, flags: ClientFlags & { set: string[]; reason?: string; idempotencyKey?: string }): Promise<void> {
  const changes: Record<string, string> = {};
  for (const pair of flags.set) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new InvalidArgumentError('--set takes field=value, e.g. --set email=new@example.com');
    const field = pair.slice(0, eq);
    if (field in changes) throw new InvalidArgumentError(`--set names the field '${field}' twice`);
    changes[field] = pair.slice(eq + 1);
  }
  // With neither --as nor LETHE_TOKEN, a person rectifies their own data.
  await withClient(flags, userId, async (client) => {
    const r = await client.rectifyUser({ userId, changes, reason: flags.reason ?? '', idempotencyKey: flags.idempotencyKey ?? randomUUID(), requestedBy: '' });
    print({ replayed: r.replayed, request: r.request === undefined ? null : toJson(r.request) });
  });
}

export async function restrictCommand(
  userId: string,
  flags: ClientFlags & { purpose: string[]; objection?: boolean; lift?: boolean; reason?: string; idempotencyKey?: string },
): Promise<void> {
  const input = {
    userId,
    purposes: flags.purpose,
    basis: flags.objection === true ? ProcessingBasis.PROCESSING_BASIS_OBJECTION : ProcessingBasis.PROCESSING_BASIS_RESTRICTION,
    reason: flags.reason ?? '',
    idempotencyKey: flags.idempotencyKey ?? randomUUID(),
    requestedBy: '',
  };
  await withClient(flags, userId, async (client) => {
    const r = flags.lift === true ? await client.liftRestriction(input) : await client.restrictProcessing(input);
    print({ replayed: r.replayed, purposes: r.purposes.map(purposeJson), request: r.request === undefined ? null : toJson(r.request) });
  });
}

export async function consentRecordCommand(
  userId: string,
  flags: ClientFlags & { purpose: string; textVersion: string; textSha256?: string; source: string },
): Promise<void> {
  await withClient(flags, userId, async (client) => {
    const r = await client.recordConsent({
      userId,
      purpose: flags.purpose,
      textVersion: flags.textVersion,
      textSha256: flags.textSha256 ?? '',
      source: flags.source,
    });
    print({ already_given: r.alreadyGiven, consent: r.consent === undefined ? null : consentJson(r.consent), purposes: r.purposes.map(purposeJson) });
  });
}

export async function consentWithdrawCommand(userId: string, flags: ClientFlags & { purpose?: string[]; source: string; reason?: string }): Promise<void> {
  await withClient(flags, userId, async (client) => {
    const r = await client.withdrawConsent({ userId, purposes: flags.purpose ?? [], source: flags.source, reason: flags.reason ?? '' });
    print({ withdrawn: r.withdrawn.map(consentJson), purposes: r.purposes.map(purposeJson), request: r.request === undefined ? null : toJson(r.request) });
  });
}

export async function consentListCommand(userId: string, flags: ClientFlags): Promise<void> {
  await withClient(flags, userId, async (client) => {
    const r = await client.listConsents({ userId });
    print({ consents: r.consents.map(consentJson), purposes: r.purposes.map(purposeJson) });
  });
}

function purposeJson(p: PurposeState) {
  return { purpose: p.purpose, restricted: p.restricted, objected: p.objected, consent: ConsentState[p.consent].replace('CONSENT_STATE_', '').toLowerCase() };
}

function consentJson(c: Consent) {
  return {
    id: c.id,
    purpose: c.purpose,
    text_version: c.textVersion,
    text_sha256: c.textSha256 === '' ? null : c.textSha256,
    source: c.source,
    given_at: iso(c.givenAt),
    given_by: c.givenBy,
    withdrawn_at: c.withdrawnAt === undefined ? null : iso(c.withdrawnAt),
    withdrawn_by: c.withdrawnBy === '' ? null : c.withdrawnBy,
    withdrawn_source: c.withdrawnSource === '' ? null : c.withdrawnSource,
  };
}
