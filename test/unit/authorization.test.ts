import { describe, expect, it } from 'vitest';
import { PermissionDeniedError } from '../../src/errors.js';
import {
  type ActorFacts,
  authorizeExport,
  authorizeForget,
  EXPORT_DENIED,
  FORGET_DENIED,
  type Membership,
  ownerRequired,
  PLATFORM_OWNER_PROTECTED,
  type SubjectFacts,
} from '../../src/privacy/authorization.js';
import type { Principal } from '../../src/privacy/principal.js';

const SUBJECT = 'user-carol';

const user = (id: string): Principal => ({ id, role: 'user' });
const platform = (id: string): Principal => ({ id, role: 'platform' });
const member = (organizationId: string, label: string, role = 'member'): Membership => ({ organizationId, label, role });
const subject = (memberships: Membership[], isPlatformOwner = false): SubjectFacts => ({ isPlatformOwner, memberships });
const actorFacts = (ownerOf: string[] = [], isPlatformOwner = false): ActorFacts => ({ isPlatformOwner, ownerOf: new Set(ownerOf) });

const ACME = member('org-acme', 'acme-corp');
const DEV = member('org-dev', 'dev-team');
const ZETA = member('org-zeta', 'zeta-labs');

/** The error a decision throws, or undefined when it allows. */
function outcome(decide: () => void): string | undefined {
  try {
    decide();
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(PermissionDeniedError);
    expect((err as PermissionDeniedError).code).toBe('PERMISSION_DENIED');
    return (err as Error).message;
  }
}

describe('the reference messages', () => {
  it('are spelled as the reference spells them', () => {
    expect(EXPORT_DENIED).toBe("You do not have permission to export this user's data");
    expect(FORGET_DENIED).toBe('You do not have permission to anonymize this user');
    expect(PLATFORM_OWNER_PROTECTED).toBe('Platform owners cannot be anonymized');
    expect(ownerRequired('acme-corp')).toBe("You must be an owner of organization 'acme-corp' to anonymize this user");
  });
});

describe('authorizeExport', () => {
  it.each<[string, Principal, string, SubjectFacts, ActorFacts, string | undefined]>([
    ['a user exports themselves', user(SUBJECT), SUBJECT, subject([]), actorFacts(), undefined],
    ['a user exports themselves while a member of an org', user(SUBJECT), SUBJECT, subject([ACME]), actorFacts(), undefined],
    ['a platform owner exports themselves', user(SUBJECT), SUBJECT, subject([], true), actorFacts([], true), undefined],
    ['an org owner exports a member', user('user-bob'), SUBJECT, subject([ACME]), actorFacts(['org-acme']), undefined],
    ["an owner of one of the member's orgs exports them", user('user-bob'), SUBJECT, subject([ACME, DEV]), actorFacts(['org-dev']), undefined],
    ['a platform principal exports anyone', platform('lethe-operator'), SUBJECT, subject([]), actorFacts(), undefined],
    ['a platform principal exports a platform owner', platform('lethe-operator'), SUBJECT, subject([ACME], true), actorFacts(), undefined],
    ['a platform owner user exports anyone', user('user-root'), SUBJECT, subject([]), actorFacts([], true), undefined],
    ['a non-owner member of the same org is denied', user('user-dave'), SUBJECT, subject([ACME]), actorFacts(), EXPORT_DENIED],
    ['an owner of another org is denied', user('user-bob'), SUBJECT, subject([ACME]), actorFacts(['org-zeta']), EXPORT_DENIED],
    ['ownership is matched by organization id, not label', user('user-bob'), SUBJECT, subject([ACME]), actorFacts(['acme-corp']), EXPORT_DENIED],
    ['a stranger exporting a subject with no memberships is denied', user('user-eve'), SUBJECT, subject([]), actorFacts(), EXPORT_DENIED],
  ])('%s', (_label, actor, subjectId, subjectFacts, facts, expected) => {
    expect(outcome(() => authorizeExport(actor, subjectId, subjectFacts, facts))).toBe(expected);
  });

  it('does not treat a different id with the same prefix as the self', () => {
    expect(outcome(() => authorizeExport(user('user-caro'), SUBJECT, subject([]), actorFacts()))).toBe(EXPORT_DENIED);
  });
});

describe('authorizeForget', () => {
  it.each<[string, Principal, SubjectFacts, ActorFacts, string | undefined]>([
    ['a platform principal forgets a member', platform('lethe-operator'), subject([ACME, DEV]), actorFacts(), undefined],
    ['a platform principal forgets a user without memberships', platform('lethe-operator'), subject([]), actorFacts(), undefined],
    ['a platform owner user forgets anyone', user('user-root'), subject([ACME]), actorFacts([], true), undefined],
    ['an owner of the only org forgets a member', user('user-bob'), subject([ACME]), actorFacts(['org-acme']), undefined],
    ['an owner of every org forgets a member', user('user-bob'), subject([ZETA, ACME, DEV]), actorFacts(['org-acme', 'org-dev', 'org-zeta']), undefined],
    ['a platform principal cannot forget a platform owner', platform('lethe-operator'), subject([], true), actorFacts(), PLATFORM_OWNER_PROTECTED],
    ['a platform owner cannot forget another platform owner', user('user-root'), subject([ACME], true), actorFacts([], true), PLATFORM_OWNER_PROTECTED],
    ['an org owner cannot forget a platform owner', user('user-bob'), subject([ACME], true), actorFacts(['org-acme']), PLATFORM_OWNER_PROTECTED],
    ['a platform owner cannot forget themselves', user(SUBJECT), subject([], true), actorFacts([], true), PLATFORM_OWNER_PROTECTED],
    [
      'an owner of some orgs only is told the first org (by label) they do not own',
      user('user-bob'),
      subject([ZETA, ACME, DEV]),
      actorFacts(['org-acme']),
      ownerRequired('dev-team'),
    ],
    ['an owner of no org is told the first org by label', user('user-dave'), subject([ZETA, DEV, ACME]), actorFacts(), ownerRequired('acme-corp')],
    [
      'an owner of the other orgs is told the one missing',
      user('user-bob'),
      subject([ACME, DEV, ZETA]),
      actorFacts(['org-acme', 'org-dev']),
      ownerRequired('zeta-labs'),
    ],
    ['ownership is matched by organization id, not label', user('user-bob'), subject([ACME]), actorFacts(['acme-corp']), ownerRequired('acme-corp')],
    ['a subject without memberships cannot be forgotten by a user', user('user-bob'), subject([]), actorFacts(['org-acme']), FORGET_DENIED],
    ['a user without memberships cannot forget themselves', user(SUBJECT), subject([]), actorFacts(), FORGET_DENIED],
    ['a plain member cannot forget themselves', user(SUBJECT), subject([DEV]), actorFacts(), ownerRequired('dev-team')],
  ])('%s', (_label, actor, subjectFacts, facts, expected) => {
    expect(outcome(() => authorizeForget(actor, subjectFacts, facts))).toBe(expected);
  });

  it('checks the platform-owner protection before anything else', () => {
    const err = outcome(() => authorizeForget(platform('lethe-operator'), subject([ACME], true), actorFacts(['org-acme'], true)));
    expect(err).toBe('Platform owners cannot be anonymized');
  });

  it('names the organization with the exact reference wording', () => {
    const err = outcome(() => authorizeForget(user('user-bob'), subject([ACME, DEV]), actorFacts(['org-acme'])));
    expect(err).toBe("You must be an owner of organization 'dev-team' to anonymize this user");
  });
});
