import { PermissionDeniedError } from '../errors.js';
import type { Principal } from './principal.js';

/**
 * The reference's authorization rules, as pure decisions over facts read from the database.
 *
 * Export: self; an owner of any organization the subject belongs to; a platform owner.
 * Forget: never a platform owner; a platform owner may forget anyone else; an organization
 * owner only when owner in every organization the subject belongs to.
 */

export interface Membership {
  readonly organizationId: string;
  /** What error messages call the organization (its slug). */
  readonly label: string;
  readonly role: string;
}

export interface SubjectFacts {
  readonly isPlatformOwner: boolean;
  readonly memberships: readonly Membership[];
}

export interface ActorFacts {
  readonly isPlatformOwner: boolean;
  /** Organizations in which the actor holds an owner role. */
  readonly ownerOf: ReadonlySet<string>;
}

export const EXPORT_DENIED = "You do not have permission to export this user's data";
export const FORGET_DENIED = 'You do not have permission to anonymize this user';
export const PLATFORM_OWNER_PROTECTED = 'Platform owners cannot be anonymized';
export const ownerRequired = (label: string): string => `You must be an owner of organization '${label}' to anonymize this user`;

function actsAsPlatformOwner(actor: Principal, facts: ActorFacts): boolean {
  return actor.role === 'platform' || facts.isPlatformOwner;
}

export function authorizeExport(actor: Principal, subjectId: string, subject: SubjectFacts, facts: ActorFacts): void {
  if (actor.id === subjectId && actor.role === 'user') return;
  if (actsAsPlatformOwner(actor, facts)) return;
  if (subject.memberships.some((m) => facts.ownerOf.has(m.organizationId))) return;
  throw new PermissionDeniedError(EXPORT_DENIED);
}

export function authorizeForget(actor: Principal, subject: SubjectFacts, facts: ActorFacts): void {
  if (subject.isPlatformOwner) throw new PermissionDeniedError(PLATFORM_OWNER_PROTECTED);
  if (actsAsPlatformOwner(actor, facts)) return;
  if (subject.memberships.length === 0) throw new PermissionDeniedError(FORGET_DENIED);
  const sorted = [...subject.memberships].sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : 0));
  for (const m of sorted) {
    if (!facts.ownerOf.has(m.organizationId)) throw new PermissionDeniedError(ownerRequired(m.label));
  }
}

const RECTIFY_DENIED = "You do not have permission to rectify this user's data";
const ownerRequiredToRectify = (label: string): string => `You must be an owner of organization '${label}' to rectify this user's data`;
const CHOICES_DENIED = "Only the person or a platform principal may change this user's processing choices and consents";

/**
 * Rectify: self; a platform owner; an organization owner only when owner in every organization
 * the subject belongs to, and never of a platform owner (as forget, since it changes the data).
 */
export function authorizeRectify(actor: Principal, subjectId: string, subject: SubjectFacts, facts: ActorFacts): void {
  if (actor.id === subjectId && actor.role === 'user') return;
  if (actsAsPlatformOwner(actor, facts)) return;
  if (subject.isPlatformOwner || subject.memberships.length === 0) throw new PermissionDeniedError(RECTIFY_DENIED);
  const sorted = [...subject.memberships].sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : 0));
  for (const m of sorted) {
    if (!facts.ownerOf.has(m.organizationId)) throw new PermissionDeniedError(ownerRequiredToRectify(m.label));
  }
}

/**
 * Restrictions, objections and consents are the person's own choices: self, or a platform
 * principal or owner acting on their request (a service that collected a consent, a DPO).
 * Organization owners may not make them for a member.
 */
export function authorizeChoices(actor: Principal, subjectId: string, facts: ActorFacts): void {
  if (actor.id === subjectId && actor.role === 'user') return;
  if (actsAsPlatformOwner(actor, facts)) return;
  throw new PermissionDeniedError(CHOICES_DENIED);
}
