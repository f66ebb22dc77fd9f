import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { DEFAULT_DATA_MAP_PATH, type DataMap, documentKeyOf, joinAlias, parseDataMap, splitColumnRef } from '../../src/privacy/data-map.js';

const SOURCE = 'test-map.yaml';

/** A small valid map: an object category and a list category. Variants edit its text. */
const BASE = `categories:
  - name: profile
    table: users
    subject: {column: id}
    secret: [password_hash]
    export:
      shape: object
      fields:
        - {name: user_id, column: id}
        - {name: email, column: email}
    forget:
      columns:
        email: {template: "anonymized-{timestamp}@deleted.local"}
        password_hash: "null"
  - name: events
    table: events
    subject: {column: user_id}
    export:
      fields:
        - {name: id, column: id}
    forget: delete
`;

function variant(from: string, to: string): string {
  if (!BASE.includes(from)) throw new Error(`test fixture does not contain ${from}`);
  return BASE.replace(from, to);
}

function configErrorOf(text: string): ConfigError {
  try {
    parseDataMap(text, SOURCE);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected parseDataMap to throw a ConfigError');
}

describe('parseDataMap: the default identity map', () => {
  const map: DataMap = parseDataMap(readFileSync(DEFAULT_DATA_MAP_PATH, 'utf8'), DEFAULT_DATA_MAP_PATH);

  it('lists the categories of the identity schema in order', () => {
    expect(map.categories.map((c) => c.name)).toEqual([
      'profile',
      'memberships',
      'login_events',
      'oauth_identities',
      'mfa_events',
      'passkeys',
      'mfa_secrets',
      'mfa_recovery_codes',
      'sessions',
      'device_trust_tokens',
      'audit_log',
    ]);
    expect(map.subject).toEqual({ table: 'users', column: 'id' });
  });

  it('exports the reference document keys', () => {
    const keys = map.categories.flatMap((c) => {
      if (!c.export) return [];
      if (c.export.shape === 'object') return c.export.fields.map((f) => f.name);
      return [...(c.export.count_key ? [c.export.count_key] : []), documentKeyOf(c)];
    });
    expect(keys).toEqual(['user_id', 'email', 'created_at', 'memberships', 'login_events_count', 'login_events', 'oauth_identities', 'mfa_events', 'passkeys']);
  });

  it('applies defaults and keeps the forget actions of the reference', () => {
    const profile = map.categories[0];
    expect(profile).toEqual({
      name: 'profile',
      table: 'users',
      subject: { column: 'id' },
      joins: [],
      secret: ['password_hash'],
      export: {
        shape: 'object',
        fields: [
          { name: 'user_id', column: 'id' },
          { name: 'email', column: 'email' },
          { name: 'created_at', column: 'created_at' },
        ],
        order_by: [],
        omit_when_empty: false,
      },
      forget: { columns: { email: { template: 'anonymized-{timestamp}@deleted.local' }, password_hash: 'null' } },
      rectify: { email: { format: 'email' } },
    });
    expect(map.purposes).toEqual(['marketing', 'analytics', 'profiling']);
    const login = map.categories.find((c) => c.name === 'login_events');
    expect(login?.export?.limit).toBe(50);
    expect(login?.export?.order_by).toEqual([
      { column: 'timestamp', direction: 'desc' },
      { column: 'id', direction: 'desc' },
    ]);
    expect(login?.forget).toMatchObject({
      columns: { ip_address: { set: '0.0.0.0' }, user_agent: { set: 'anonymized' }, geo_country: 'null', geo_city: 'null' },
    });
    const forgets = Object.fromEntries(map.categories.map((c) => [c.name, typeof c.forget === 'string' ? c.forget : 'keep' in c.forget ? 'keep' : 'columns']));
    expect(forgets).toEqual({
      profile: 'columns',
      memberships: 'keep',
      login_events: 'columns',
      oauth_identities: 'delete',
      mfa_events: 'keep',
      passkeys: 'delete',
      mfa_secrets: 'delete',
      mfa_recovery_codes: 'delete',
      sessions: 'delete',
      device_trust_tokens: 'delete',
      audit_log: 'columns',
    });
    expect(map.categories.find((c) => c.name === 'audit_log')?.subject).toEqual({ columns: ['actor_id', 'target_id'] });
  });

  it('reads the authorization and audit sections', () => {
    expect(map.authorization?.memberships.owner_roles).toEqual(['owner']);
    expect(map.authorization?.memberships.organization_label).toEqual({ table: 'organizations', column: 'slug', references: 'id' });
    expect(map.audit?.table).toBe('audit_log');
  });
});

describe('parseDataMap: forget actions', () => {
  it.each([
    ['YAML null', 'password_hash: null'],
    ['YAML ~', 'password_hash: ~'],
    ['the string "null"', 'password_hash: "null"'],
    ['the single-quoted string null', "password_hash: 'null'"],
  ])('%s means the null action', (_label, line) => {
    const map = parseDataMap(variant('password_hash: "null"', line), SOURCE);
    expect(map.categories[0]?.forget).toEqual({
      columns: { email: { template: 'anonymized-{timestamp}@deleted.local' }, password_hash: 'null' },
    });
  });

  it.each([
    ['{set: "0.0.0.0"}', { set: '0.0.0.0' }],
    ['{set: 0}', { set: 0 }],
    ['{set: false}', { set: false }],
    ['hash', 'hash'],
    ['{template: "gone-{request_id}"}', { template: 'gone-{request_id}' }],
  ])('accepts %s', (yamlAction, parsed) => {
    const map = parseDataMap(variant('password_hash: "null"', `password_hash: ${yamlAction}`), SOURCE);
    const forget = map.categories[0]?.forget;
    expect(typeof forget === 'object' && 'columns' in forget ? forget.columns.password_hash : undefined).toEqual(parsed);
  });

  it('accepts a join named by its alias and a schema-qualified table', () => {
    const map = parseDataMap(
      variant(
        'subject: {column: user_id}',
        'subject: {column: user_id}\n    joins: [{table: public.organizations, as: o, column: org_id, references: id}]',
      ).replace('{name: id, column: id}', '{name: slug, column: o.slug}'),
      SOURCE,
    );
    const events = map.categories[1];
    expect(events?.joins).toEqual([{ table: 'public.organizations', as: 'o', column: 'org_id', references: 'id' }]);
    expect(events?.export?.shape).toBe('list');
    expect(events?.export?.fields).toEqual([{ name: 'slug', column: 'o.slug' }]);
  });
});

describe('parseDataMap: errors name the source and the bad key', () => {
  it.each([
    [
      'a bad table identifier',
      variant('table: users', 'table: "users; drop"'),
      `${SOURCE}: categories[0].table: must be a table name, optionally schema-qualified (schema.table)`,
    ],
    [
      'a bad secret identifier',
      variant('secret: [password_hash]', 'secret: ["pw hash"]'),
      `${SOURCE}: categories[0].secret[0]: must be an SQL identifier: a letter or _ then letters, digits or _ (at most 63)`,
    ],
    [
      'a bad column reference',
      variant('{name: id, column: id}', '{name: id, column: "id::text"}'),
      `${SOURCE}: categories[1].export.fields[0].column: must be a column name, or join_table.column`,
    ],
    ['an unknown key in a category', variant('table: users', 'table: users\n    colour: red'), `${SOURCE}: categories[0]: Unrecognized key: "colour"`],
    [
      'an unknown key in export',
      variant('{name: id, column: id}', '{name: id, column: id}\n      sort: id'),
      `${SOURCE}: categories[1].export: Unrecognized key: "sort"`,
    ],
    ['an unknown key at the root', `${BASE}extra: 1\n`, `${SOURCE}: (root): Unrecognized key: "extra"`],
    ['an empty document', '', `${SOURCE}: (root): Invalid input: expected object, received null`],
    [
      'a zero limit',
      variant('{name: id, column: id}', '{name: id, column: id}\n      limit: 0'),
      `${SOURCE}: categories[1].export.limit: Too small: expected number to be >0`,
    ],
    [
      'a field naming a secret column',
      variant('{name: email, column: email}', '{name: pw, column: password_hash}'),
      `${SOURCE}: categories[0] (profile).export.fields[1]: column 'password_hash' is marked secret and is never exported`,
    ],
    [
      'a field naming a join that is not declared',
      variant('{name: id, column: id}', '{name: organization_slug, column: organizations.slug}'),
      `${SOURCE}: categories[1] (events).export.fields[0]: 'organizations.slug' names 'organizations', which is not one of this category's joins`,
    ],
    [
      'an order_by naming a join that is not declared',
      variant('{name: id, column: id}', '{name: id, column: id}\n      order_by: [{column: organizations.slug}]'),
      `${SOURCE}: categories[1] (events).export.order_by[0]: 'organizations.slug' names 'organizations', which is not one of this category's joins`,
    ],
    ['a duplicate category name', variant('name: events', 'name: profile'), `${SOURCE}: categories[1] (profile): duplicate category name 'profile'`],
    [
      'a duplicate field name',
      variant('{name: id, column: id}', '{name: id, column: id}\n        - {name: id, column: other}'),
      `${SOURCE}: categories[1] (events).export.fields: duplicate field name 'id'`,
    ],
    [
      'a list key equal to an object field',
      variant('{name: id, column: id}', '{name: id, column: id}\n      key: user_id'),
      `${SOURCE}: categories[1] (events).export: document key 'user_id' is used twice`,
    ],
    [
      'a count_key equal to an object field',
      variant('{name: id, column: id}', '{name: id, column: id}\n      count_key: email'),
      `${SOURCE}: categories[1] (events).export: document key 'email' is used twice`,
    ],
    [
      'a count_key equal to its own list key',
      variant('{name: id, column: id}', '{name: id, column: id}\n      count_key: events'),
      `${SOURCE}: categories[1] (events).export: document key 'events' is used twice`,
    ],
    [
      'a rectify field on a secret column',
      variant('password_hash: "null"\n', 'password_hash: "null"\n    rectify: {password: {column: password_hash}}\n'),
      `${SOURCE}: categories[0] (profile).rectify.password: column 'password_hash' is secret: secrets are not rectified (reset them through the service)`,
    ],
    [
      'a rectify field on the subject column',
      variant('password_hash: "null"\n', 'password_hash: "null"\n    rectify: {user_id: {column: id}}\n'),
      `${SOURCE}: categories[0] (profile).rectify.user_id: column 'id' links the rows to the subject and cannot be rectified`,
    ],
    [
      'a rectify pattern that is not a regular expression',
      variant('password_hash: "null"\n', 'password_hash: "null"\n    rectify: {email: {pattern: "([a-z"}}\n'),
      `${SOURCE}: categories[0].rectify.email.pattern: must be a valid regular expression`,
    ],
    [
      'an unknown rectify format',
      variant('password_hash: "null"\n', 'password_hash: "null"\n    rectify: {email: {format: url}}\n'),
      `${SOURCE}: categories[0].rectify.email.format: Invalid option: expected one of "text"|"email"|"phone"`,
    ],
    ['a purpose listed twice', `purposes: [marketing, analytics, marketing]\n${BASE}`, `${SOURCE}: purposes: purpose 'marketing' is listed twice`],
    [
      'a purpose that is not an identifier',
      `purposes: [direct-marketing]\n${BASE}`,
      `${SOURCE}: purposes[0]: must be an SQL identifier: a letter or _ then letters, digits or _ (at most 63)`,
    ],
    [
      'shape object with a limit',
      variant('shape: object', 'shape: object\n      limit: 5'),
      `${SOURCE}: categories[0] (profile).export: an 'object' category is merged into the top level: it takes no key, limit, count_key or omit_when_empty`,
    ],
    [
      'shape object with a count_key',
      variant('shape: object', 'shape: object\n      count_key: profile_count'),
      `${SOURCE}: categories[0] (profile).export: an 'object' category is merged into the top level: it takes no key, limit, count_key or omit_when_empty`,
    ],
    [
      'an unknown template placeholder',
      variant('{template: "anonymized-{timestamp}@deleted.local"}', '{template: "anonymized-{email}@deleted.local"}'),
      `${SOURCE}: categories[0] (profile).forget.columns.email.template: unknown placeholder {email}: use {timestamp}, {request_id} or {column:NAME} (a column of the same row)`,
    ],
    [
      'keeping a secret column',
      variant('password_hash: "null"', 'password_hash: keep'),
      `${SOURCE}: categories[0] (profile).forget.columns.password_hash: a secret column cannot be kept by forget: use null, set, hash or delete the rows`,
    ],
  ])('%s', (_label, text, message) => {
    const err = configErrorOf(text);
    expect(err.name).toBe('ConfigError');
    expect(err.source).toBe(SOURCE);
    expect(err.message).toBe(message);
  });

  it('reports invalid YAML with its position', () => {
    const err = configErrorOf('categories: [\n  - name: x');
    expect(err.message.startsWith(`${SOURCE}: not valid YAML: Block collections are not allowed within flow collections at line 2, column 3`)).toBe(true);
  });

  it('reports duplicate YAML mapping keys as invalid YAML', () => {
    const err = configErrorOf(variant('table: events', 'table: events\n    table: other'));
    expect(err.message.startsWith(`${SOURCE}: not valid YAML: Map keys must be unique at line`)).toBe(true);
  });

  it('names the forget column whose action is not valid', () => {
    const err = configErrorOf(variant('password_hash: "null"', 'password_hash: shred'));
    expect(err.message.startsWith(`${SOURCE}: categories[0]`)).toBe(true);
    // The data map must name the bad key; a union failure reported at `forget` does not say which column.
    expect(err.message).toContain('password_hash');
  });
});

describe('data map helpers', () => {
  it.each([
    ['slug', [undefined, 'slug']],
    ['organizations.slug', ['organizations', 'slug']],
  ] as const)('splitColumnRef(%s)', (ref, parts) => {
    expect(splitColumnRef(ref)).toEqual(parts);
  });

  it.each([
    [{ table: 'organizations' }, 'organizations'],
    [{ table: 'public.organizations' }, 'organizations'],
    [{ table: 'public.organizations', as: 'o' }, 'o'],
  ])('joinAlias(%j) is %s', (j, alias) => {
    expect(joinAlias(j)).toBe(alias);
  });
});
