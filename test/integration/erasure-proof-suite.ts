import { randomBytes } from 'node:crypto';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../src/errors.js';
import { ArtifactCipher } from '../../src/privacy/artifact-cipher.js';
import { DEFAULT_DATA_MAP_PATH, type DataMap, keepsCategory, loadDataMap } from '../../src/privacy/data-map.js';
import type { PrivacyEngine } from '../../src/privacy/engine.js';
import { ARTIFACT_ERASED, ARTIFACT_KEY_ERASED } from '../../src/privacy/export-artifacts.js';
import type { Principal } from '../../src/privacy/principal.js';
import { subjectPredicate } from '../../src/privacy/sql.js';
import type { Database } from '../../src/store/database.js';
import { collectExport, demoEngine, never } from '../support/engine-fixture.js';

/**
 * The proof that erased means erased: for every demo user and for generated subjects, export,
 * store an export, forget, then dump every column of every table in the database (Lethe's own
 * included) and find none of the subject's former personal values.
 *
 * What counts as personal is declared here, independently of the data map (KEPT_BY_DESIGN lists
 * the columns the reference keeps: ids, timestamps, memberships, counts, the audit trail), so a
 * column dropped from the map's forget rules, or a rule that silently matches nothing, fails
 * this test rather than shrinking what it looks for.
 */

const KEPT_BY_DESIGN: Readonly<Record<string, readonly string[]>> = {
  users: ['id', 'is_platform_owner', 'created_at'],
  memberships: ['user_id', 'organization_id', 'role', 'joined_at'],
  login_events: ['id', 'user_id', 'timestamp', 'provider', 'success', 'risk_score', 'risk_factors'],
  oauth_identities: ['id', 'user_id', 'provider', 'linked_at'],
  mfa_events: ['id', 'user_id', 'event_type', 'success', 'timestamp'],
  mfa_secrets: ['user_id', 'created_at'],
  mfa_recovery_codes: ['id', 'user_id', 'used_at'],
  passkeys: ['id', 'user_id', 'created_at', 'last_used_at', 'backup_eligible'],
  sessions: ['id', 'user_id', 'created_at', 'expires_at'],
  device_trust_tokens: ['id', 'user_id', 'created_at', 'expires_at'],
  // Audit entries stay; in details only references survive.
  audit_log: [
    'id',
    'event_type',
    'actor_id',
    'target_id',
    'timestamp',
    'details.request_id',
    'details.requested_by',
    'details.organization_id',
    'details.role',
    'details.provider',
  ],
};

const platform: Principal = { id: 'platform-owner-id', role: 'user' };

interface Cell {
  readonly table: string;
  readonly ctid: string;
  readonly column: string;
  readonly value: string;
}

/** Every string in every column of every row of every table: JSON values leaf by leaf (`column.key`). */
async function dumpDatabase(knex: Knex): Promise<Cell[]> {
  const tables = (await knex('information_schema.tables')
    .where({ table_type: 'BASE TABLE' })
    .andWhere('table_schema', knex.raw('current_schema()'))
    .pluck('table_name')) as string[];
  const cells: Cell[] = [];
  for (const table of tables) {
    const { rows } = (await knex.raw(`SELECT ctid::text AS ctid, to_jsonb(t) AS row FROM "${table}" AS t`)) as {
      rows: Array<{ ctid: string; row: Record<string, unknown> | string }>;
    };
    for (const r of rows) {
      const row = typeof r.row === 'string' ? (JSON.parse(r.row) as Record<string, unknown>) : r.row;
      for (const [column, value] of Object.entries(row)) leaves(value, column, (path, v) => cells.push({ table, ctid: r.ctid, column: path, value: v }));
    }
  }
  return cells;
}

function leaves(value: unknown, path: string, out: (path: string, v: string) => void): void {
  if (typeof value === 'string') {
    // JSON kept as text (a jsonb column written as a string) is walked too.
    if (/^[[{]/.test(value)) {
      try {
        leaves(JSON.parse(value) as unknown, path, out);
        return;
      } catch {
        // not JSON: a plain string
      }
    }
    out(path, value);
  } else if (Array.isArray(value)) value.forEach((v) => leaves(v, path, out));
  else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) leaves(v, `${path}.${k}`, out);
}

/** The rows (table, ctid) that belong to the subject under the map's subject relations. */
async function subjectRows(knex: Knex, map: DataMap, subjectId: string): Promise<Set<string>> {
  const out = new Set<string>();
  for (const c of map.categories) {
    const where = subjectPredicate(c.subject, c.table, subjectId);
    const { rows } = (await knex.raw(`SELECT ctid::text AS ctid FROM "${c.table}" WHERE ${where.sql}`, where.bindings)) as { rows: Array<{ ctid: string }> };
    for (const r of rows) out.add(`${c.table}@${r.ctid}`);
  }
  return out;
}

/**
 * The subject's personal values: strings in its rows outside KEPT_BY_DESIGN, less any value that
 * may legitimately remain (it also stands in a kept column, or in someone else's row).
 */
function formerValues(before: readonly Cell[], mine: ReadonlySet<string>, subjectId: string): Set<string> {
  const personal = (c: Cell) => KEPT_BY_DESIGN[c.table] !== undefined && !(KEPT_BY_DESIGN[c.table] ?? []).includes(c.column);
  const candidates = new Set<string>();
  const remaining = new Set<string>();
  for (const c of before) {
    if (mine.has(`${c.table}@${c.ctid}`) && personal(c)) candidates.add(c.value);
    else remaining.add(c.value);
  }
  return new Set([...candidates].filter((v) => !remaining.has(v) && v !== subjectId && v.trim() !== ''));
}

const holds = (cell: string, value: string): boolean => cell === value || (value.length >= 6 && cell.includes(value));

/** Rows of every identity table for a made-up person, every personal value unique to them. */
async function insertGeneratedSubject(knex: Knex, id: string): Promise<string[]> {
  const t = randomBytes(4).toString('hex');
  const at = new Date('2025-02-01T10:00:00Z');
  const planted = {
    email: `gen-${t}@example.org`,
    hash: `$argon2id$gen-${t}`,
    ip: `192.0.2.${(parseInt(t.slice(0, 2), 16) % 250) + 1}-${t}`,
    ua: `GenBrowser/${t}`,
    city: `Town-${t}`,
    country: `C${t}`,
    providerUser: `gh-${t}`,
    token: `tok-${t}`,
    passkey: `Key of ${t}`,
    secret: `otp-${t}`,
    oldEmail: `old-${t}@example.org`,
  };
  await knex('users').insert({ id, email: planted.email, password_hash: planted.hash, created_at: at });
  await knex('memberships').insert({ user_id: id, organization_id: 'org-id-456', role: 'member', joined_at: at });
  await knex('login_events').insert(
    [1, 2, 3].map((n) => ({
      id: `${id}-login-${n}`,
      user_id: id,
      timestamp: new Date(at.getTime() + n * 1000),
      ip_address: planted.ip,
      user_agent: planted.ua,
      provider: 'password',
      success: true,
      risk_score: 1,
      risk_factors: '[]',
      geo_country: planted.country,
      geo_city: planted.city,
    })),
  );
  await knex('oauth_identities').insert({
    id: `${id}-oauth`,
    user_id: id,
    provider: 'github',
    provider_user_id: planted.providerUser,
    access_token: `${planted.token}-a`,
    refresh_token: `${planted.token}-r`,
    linked_at: at,
  });
  await knex('mfa_secrets').insert({ user_id: id, secret: planted.secret, created_at: at });
  await knex('mfa_recovery_codes').insert({ id: `${id}-rc`, user_id: id, code_hash: `${planted.token}-rc` });
  await knex('mfa_events').insert({ id: `${id}-mfa`, user_id: id, event_type: 'totp_enabled', success: true, timestamp: at });
  await knex('passkeys').insert({
    id: `${id}-pk`,
    user_id: id,
    name: planted.passkey,
    credential_id: `${planted.token}-cred`,
    public_key: `${planted.token}-pub`,
    aaguid: `aaguid-${t}`,
    created_at: at,
  });
  await knex('sessions').insert({
    id: `${id}-s`,
    user_id: id,
    token_hash: `${planted.token}-s`,
    ip_address: planted.ip,
    user_agent: planted.ua,
    expires_at: at,
  });
  await knex('device_trust_tokens').insert({ id: `${id}-d`, user_id: id, token_hash: `${planted.token}-d`, expires_at: at });
  await knex('audit_log').insert({
    event_type: 'email_changed',
    actor_id: id,
    target_id: id,
    details: JSON.stringify({ old_email: planted.oldEmail, new_email: planted.email, note: { city: planted.city } }),
    ip_address: planted.ip,
    user_agent: planted.ua,
    timestamp: at,
  });
  const { token, ...values } = planted;
  return [...Object.values(values), `${token}-a`, `${token}-cred`, `${token}-s`, `aaguid-${t}`];
}

export function erasureProofSuite(name: string, open: () => Promise<Database>, close?: () => Promise<void>): void {
  describe(`erased means erased, proven by a whole-database scan (${name})`, () => {
    let db: Database;
    let engine: PrivacyEngine;
    let map: DataMap;
    const generated: Record<string, string[]> = {};

    beforeAll(async () => {
      db = await open();
      engine = await demoEngine(db, { artifacts: { cipher: new ArtifactCipher(randomBytes(32)), ttlMs: 86_400_000, chunkBytes: 4096 } });
      map = await loadDataMap(DEFAULT_DATA_MAP_PATH);
      for (const n of [1, 2, 3]) generated[`generated-${n}`] = await insertGeneratedSubject(db.knex, `generated-${n}`);
    });
    afterAll(async () => {
      await db?.close();
      await close?.();
    });

    const subjects = ['user-id-123', 'member-user-id-456', 'owner-user-id-1', 'owner-user-id-2', 'generated-1', 'generated-2', 'generated-3'];
    it.each(subjects)('leaves nothing of %s anywhere in the database', async (subjectId) => {
      const k = db.knex;
      const { doc } = await collectExport(engine.exportUser(platform, { userId: subjectId, reason: 'access before erasure' }, never));
      expect(doc).toMatchObject({ user_id: subjectId });
      const stored = await engine.storeExport(platform, { userId: subjectId, reason: '', idempotencyKey: `proof-store-${subjectId}` }, never);

      const before = await dumpDatabase(k);
      const former = formerValues(before, await subjectRows(k, map, subjectId), subjectId);
      // Not vacuous: the exported email, and every value planted for a generated subject, are looked for.
      expect(former).toContain(doc.email);
      for (const v of generated[subjectId] ?? []) expect(former, `planted value ${v}`).toContain(v);

      // Rows each statement must reach, counted before anything changes: a rule that matches
      // fewer (a link cut by an earlier statement) shows up as a smaller count.
      const expected = new Map<string, number>();
      for (const c of map.categories.filter((x) => !keepsCategory(x))) {
        const where = subjectPredicate(c.subject, c.table, subjectId);
        const { rows } = (await k.raw(`SELECT count(*)::int AS n FROM "${c.table}" WHERE ${where.sql}`, where.bindings)) as { rows: Array<{ n: number }> };
        expected.set(c.table, (expected.get(c.table) ?? 0) + Number(rows[0]?.n ?? 0));
      }

      const result = await engine.forgetUser(platform, {
        userId: subjectId,
        reason: 'GDPR Right to be Forgotten',
        idempotencyKey: `proof-forget-${subjectId}`,
      });
      for (const [table, n] of expected) {
        expect(result.rowsAffected.find((r) => r.table === table)?.rows, `rows of ${table}`).toBe(n);
      }

      const after = await dumpDatabase(k);
      const survivors = after.filter((c) => [...former].some((v) => holds(c.value, v)));
      expect([...new Set(survivors.map((c) => `${c.table}.${c.column}`))]).toEqual([]);

      // The stored export is crypto-shredded: no data key, no chunks, and it cannot be read or replayed.
      expect(await k('lethe_export_artifact_keys').where({ request_id: stored.requestId })).toEqual([]);
      expect(await k('lethe_export_artifact_chunks').where({ request_id: stored.requestId })).toEqual([]);
      await expect(collectParts(engine.exportArtifact(platform, stored.requestId, never))).rejects.toThrow(new FailedPreconditionError(ARTIFACT_ERASED));
      await expect(engine.storeExport(platform, { userId: subjectId, reason: '', idempotencyKey: `proof-store-${subjectId}` }, never)).rejects.toThrow(
        new FailedPreconditionError(ARTIFACT_KEY_ERASED),
      );
      expect((await engine.getRequest(platform, stored.requestId)).artifact?.state).toBe('erased');

      // Forgetting again changes nothing and is audited as such.
      const again = await engine.forgetUser(platform, { userId: subjectId, reason: 'again', idempotencyKey: `proof-forget-again-${subjectId}` });
      expect(again.rowsAffected).toEqual([]);
      const audits = (await k('audit_log')
        .where({ target_id: subjectId })
        .whereIn('event_type', ['user_anonymized', 'user_already_anonymized'])
        .pluck('event_type')) as string[];
      expect(audits.sort()).toEqual(['user_already_anonymized', 'user_anonymized']);
    });

    it('leaves nothing of a person who rectified their email, restricted and consented before the erasure', async () => {
      const k = db.knex;
      const id = 'generated-rights';
      const planted = await insertGeneratedSubject(k, id);
      // Services must confirm, so the new value waits in Lethe's own table until the forget.
      const confirming = await demoEngine(db, { expectedServices: ['orders'] });
      const newEmail = `rectified-${randomBytes(4).toString('hex')}@example.org`;
      await confirming.rectifyUser(platform, { userId: id, changes: { email: newEmail }, reason: 'typo', idempotencyKey: 'proof-rectify' });
      expect(JSON.stringify(await k('lethe_rectifications').where({ subject_id: id }).pluck('pending_values'))).toContain(newEmail);
      await confirming.restrictProcessing(platform, {
        userId: id,
        purposes: ['profiling'],
        basis: 'restriction',
        reason: '',
        idempotencyKey: 'proof-restrict',
      });
      await confirming.recordConsent(platform, { userId: id, purpose: 'marketing', textVersion: 'v1', textSha256: '', source: 'web-signup' });

      // The new email also waits in lethe_rectifications, so the scan's rule would not count it as the person's alone: look for it, and the
      // email it replaced, by name.
      const former = formerValues(await dumpDatabase(k), await subjectRows(k, map, id), id);
      for (const v of planted.slice(1)) expect(former, `planted value ${v}`).toContain(v);

      await confirming.forgetUser(platform, { userId: id, reason: 'GDPR Right to be Forgotten', idempotencyKey: 'proof-forget-rights' });
      const after = await dumpDatabase(k);
      const survivors = after.filter((c) => [...former, newEmail, planted[0] ?? ''].some((v) => holds(c.value, v)));
      expect([...new Set(survivors.map((c) => `${c.table}.${c.column}`))]).toEqual([]);
      expect(await k('lethe_processing_limits').where({ subject_id: id })).toEqual([]);
      expect(await k('lethe_consents').where({ subject_id: id }).pluck('withdrawn_source')).toEqual(['erasure']);
    });
  });
}

async function collectParts(parts: AsyncIterable<unknown>): Promise<number> {
  let n = 0;
  for await (const _ of parts) n += 1;
  return n;
}
