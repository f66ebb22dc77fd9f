import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LetheProcess, runLethe, startLetheProcess } from '../support/lethe-process.js';

/** `lethe rectify`, `lethe restrict` and `lethe consent` against `lethe serve --demo` on the embedded database. */

describe('the lethe command: rectification, restriction and consent', () => {
  let dataDir: string;
  let server: LetheProcess;

  const lethe = (...args: string[]) => runLethe(server, dataDir, args);
  const json = (r: { stdout: string }) => JSON.parse(r.stdout) as Record<string, unknown>;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'lethe-rights-'));
    server = await startLetheProcess({ dataDir, env: {} });
  });

  afterAll(() => {
    server?.process.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('rectifies a person’s own email, and the export shows the new value', async () => {
    const r = await lethe('rectify', 'user-id-123', '--set', 'email=renamed@example.org', '--reason', 'typo');
    expect(r.stderr).toBe('');
    expect(json(r)).toMatchObject({
      replayed: false,
      request: { type: 'rectify', state: 'completed', fields: ['email'], rows_affected: [{ table: 'users', action: 'update', rows: 1 }] },
    });
    const doc = await lethe('export', 'user-id-123');
    expect((JSON.parse(doc.stdout) as { email: string }).email).toBe('renamed@example.org');
  });

  it('refuses bad input with one line: a malformed --set, an unknown field, a bad value', async () => {
    expect(await lethe('rectify', 'user-id-123', '--set', 'email')).toMatchObject({
      code: 1,
      stderr: 'lethe: --set takes field=value, e.g. --set email=new@example.com\n',
    });
    expect(await lethe('rectify', 'user-id-123', '--set', 'name=Ann')).toMatchObject({
      code: 1,
      stderr: "lethe: INVALID_ARGUMENT: unknown field 'name': rectifiable fields are email\n",
    });
    expect(await lethe('rectify', 'user-id-123', '--set', 'email=nope')).toMatchObject({
      code: 1,
      stderr: 'lethe: INVALID_ARGUMENT: email: must be an email address (name@domain.tld)\n',
    });
  });

  it('restricts, objects and lifts per purpose, and prints what now applies', async () => {
    const restricted = json(await lethe('restrict', 'user-id-123', '--purpose', 'marketing', '--purpose', 'profiling'));
    expect(restricted.purposes).toEqual([
      { purpose: 'marketing', restricted: true, objected: false, consent: 'none' },
      { purpose: 'analytics', restricted: false, objected: false, consent: 'none' },
      { purpose: 'profiling', restricted: true, objected: false, consent: 'none' },
    ]);
    expect(restricted.request).toMatchObject({ type: 'restrict', purposes: ['marketing', 'profiling'], basis: 'restriction' });
    const objected = json(await lethe('restrict', 'user-id-123', '--purpose', 'analytics', '--objection'));
    expect((objected.purposes as unknown[])[1]).toEqual({ purpose: 'analytics', restricted: false, objected: true, consent: 'none' });
    const lifted = json(await lethe('restrict', 'user-id-123', '--purpose', 'marketing', '--lift'));
    expect(lifted.request).toMatchObject({ type: 'lift_restriction', purposes: ['marketing'] });
    expect((lifted.purposes as unknown[])[0]).toEqual({ purpose: 'marketing', restricted: false, objected: false, consent: 'none' });
    expect(await lethe('restrict', 'user-id-123', '--purpose', 'ads')).toMatchObject({
      code: 1,
      stderr: "lethe: INVALID_ARGUMENT: unknown purpose 'ads': purposes are marketing, analytics, profiling\n",
    });
  });

  it('records, lists and withdraws consent', async () => {
    const given = json(await lethe('consent', 'record', 'user-id-123', '--purpose', 'analytics', '--text-version', '2026-11', '--source', 'web-signup'));
    expect(given).toMatchObject({
      already_given: false,
      consent: { purpose: 'analytics', text_version: '2026-11', source: 'web-signup', given_by: 'user-id-123' },
    });
    const listed = json(await lethe('consent', 'list', 'user-id-123'));
    expect((listed.consents as unknown[]).length).toBe(1);
    const withdrawn = json(await lethe('consent', 'withdraw', 'user-id-123', '--source', 'settings'));
    expect(withdrawn).toMatchObject({
      withdrawn: [{ purpose: 'analytics', withdrawn_source: 'settings' }],
      request: { type: 'withdraw_consent', purposes: ['analytics'] },
    });
    expect((withdrawn.purposes as Array<{ consent: string }>).map((p) => p.consent)).toEqual(['none', 'withdrawn', 'none']);
  });
});
