import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type DocumentCategory, ExportDocumentAssembler } from '../../src/privacy/export-document.js';

const sha256 = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');

const HEADER: DocumentCategory[] = [
  { name: 'profile', documentKey: 'profile', shape: 'object', totalCount: 1 },
  { name: 'memberships', documentKey: 'memberships', shape: 'list', totalCount: 2 },
  { name: 'login_events', documentKey: 'login_events', shape: 'list', countKey: 'login_events_count', totalCount: 120 },
  { name: 'oauth_identities', documentKey: 'oauth_identities', shape: 'list', totalCount: 0 },
  { name: 'passkeys', documentKey: 'passkeys', shape: 'list', totalCount: 0 },
];

const PROFILE = '{"user_id":"u-1","email":"alice@example.com","created_at":"2024-06-15T10:00:00Z"}';
const M1 = '{"organization_id":"o-1","organization_slug":"acme-corp","role":"owner"}';
const M2 = '{"organization_id":"o-2","organization_slug":"dev-team","role":"member"}';
const L1 = '{"id":3,"ip_address":"10.0.0.3"}';
const L2 = '{"id":2,"ip_address":"10.0.0.2"}';
const L3 = '{"id":1,"ip_address":"10.0.0.1"}';

const EXPECTED =
  '{"user_id":"u-1","email":"alice@example.com","created_at":"2024-06-15T10:00:00Z",' +
  `"memberships":[${M1},${M2}],` +
  `"login_events_count":120,"login_events":[${L1},${L2},${L3}],` +
  '"oauth_identities":[],"passkeys":[]}';

/** Feeds batches and returns the emitted text with what finish() reported. */
function assemble(header: readonly DocumentCategory[], batches: ReadonlyArray<readonly [string, readonly string[]]>) {
  const chunks: string[] = [];
  const assembler = new ExportDocumentAssembler(header, (c) => chunks.push(c.toString()));
  for (const [category, records] of batches) assembler.add(category, records);
  const result = assembler.finish();
  return { text: chunks.join(''), ...result };
}

describe('ExportDocumentAssembler: the canonical document', () => {
  const oneCall = assemble(HEADER, [
    ['profile', [PROFILE]],
    ['memberships', [M1, M2]],
    ['login_events', [L1, L2, L3]],
  ]);

  it('merges the object category at top level, puts count_key before its list, and writes [] for empty lists', () => {
    expect(oneCall.text).toBe(EXPECTED);
    expect(JSON.parse(oneCall.text)).toEqual({
      user_id: 'u-1',
      email: 'alice@example.com',
      created_at: '2024-06-15T10:00:00Z',
      memberships: [JSON.parse(M1), JSON.parse(M2)],
      login_events_count: 120,
      login_events: [JSON.parse(L1), JSON.parse(L2), JSON.parse(L3)],
      oauth_identities: [],
      passkeys: [],
    });
  });

  it('returns the SHA-256 of exactly the emitted text', () => {
    expect(oneCall.sha256).toBe(sha256(EXPECTED));
    expect(oneCall.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it('counts the records received per category (not the header total)', () => {
    expect(Object.fromEntries(oneCall.counts)).toEqual({ profile: 1, memberships: 2, login_events: 3, oauth_identities: 0, passkeys: 0 });
  });

  it('gives the same bytes and hash when batches are split across several add calls', () => {
    const split = assemble(HEADER, [
      ['profile', []],
      ['profile', [PROFILE]],
      ['memberships', [M1]],
      ['memberships', []],
      ['memberships', [M2]],
      ['login_events', [L1]],
      ['login_events', [L2]],
      ['login_events', [L3]],
      ['oauth_identities', []],
    ]);
    expect(split.text).toBe(EXPECTED);
    expect(split.sha256).toBe(oneCall.sha256);
    expect(Object.fromEntries(split.counts)).toEqual(Object.fromEntries(oneCall.counts));
  });

  it('still writes every announced category when no batch arrives at all', () => {
    const empty = assemble(HEADER, []);
    expect(empty.text).toBe('{"memberships":[],"login_events_count":120,"login_events":[],"oauth_identities":[],"passkeys":[]}');
    expect(empty.sha256).toBe(sha256(empty.text));
    expect(Object.fromEntries(empty.counts)).toEqual({ profile: 0, memberships: 0, login_events: 0, oauth_identities: 0, passkeys: 0 });
  });

  it('writes {} for a header with no categories', () => {
    const none = assemble([], []);
    expect(none.text).toBe('{}');
    expect(none.sha256).toBe(sha256('{}'));
    expect(none.counts.size).toBe(0);
  });

  it('writes nothing for an object category whose record is {}', () => {
    const doc = assemble(HEADER.slice(0, 2), [
      ['profile', ['{}']],
      ['memberships', [M1]],
    ]);
    expect(doc.text).toBe(`{"memberships":[${M1}]}`);
    expect(doc.counts.get('profile')).toBe(1);
  });

  it('separates an object category that follows a list with a comma', () => {
    const header: DocumentCategory[] = [
      { name: 'events', documentKey: 'events', shape: 'list', totalCount: 1 },
      { name: 'profile', documentKey: 'profile', shape: 'object', totalCount: 1 },
    ];
    const doc = assemble(header, [
      ['events', ['{"id":1}']],
      ['profile', ['{"user_id":"u-1"}']],
    ]);
    expect(doc.text).toBe('{"events":[{"id":1}],"user_id":"u-1"}');
  });

  it('uses the document key, which may differ from the category name', () => {
    const header: DocumentCategory[] = [{ name: 'login_events', documentKey: 'logins', shape: 'list', countKey: 'logins_total', totalCount: 7 }];
    expect(assemble(header, [['login_events', ['{"id":1}']]]).text).toBe('{"logins_total":7,"logins":[{"id":1}]}');
  });

  it('hashes the same bytes whether or not a sink is given', () => {
    const assembler = new ExportDocumentAssembler(HEADER);
    assembler.add('profile', [PROFILE]);
    assembler.add('memberships', [M1, M2]);
    assembler.add('login_events', [L1, L2, L3]);
    expect(assembler.finish().sha256).toBe(sha256(EXPECTED));
  });
});

describe('ExportDocumentAssembler: errors', () => {
  it('refuses a batch for a category the header did not announce', () => {
    const assembler = new ExportDocumentAssembler(HEADER);
    expect(() => assembler.add('sessions', ['{}'])).toThrow(new Error("record batch for category 'sessions', which the header did not announce"));
  });

  it('refuses a batch for a category after a later category', () => {
    const assembler = new ExportDocumentAssembler(HEADER);
    assembler.add('login_events', [L1]);
    expect(() => assembler.add('memberships', [M1])).toThrow(new Error("record batch for category 'memberships' arrived after a later category"));
  });

  it('refuses a second record for an object category', () => {
    const assembler = new ExportDocumentAssembler(HEADER);
    assembler.add('profile', [PROFILE]);
    expect(() => assembler.add('profile', [PROFILE])).toThrow(new Error('category profile has shape object but more than one record'));
  });

  it('refuses a batch after finish', () => {
    const assembler = new ExportDocumentAssembler(HEADER);
    assembler.finish();
    expect(() => assembler.add('passkeys', [])).toThrow(new Error('export document already finished'));
  });
});
