import type { Knex } from 'knex';
import { lockKey } from './advisory-lock.js';

/**
 * The reference's example, so anyone can try Lethe at once (`lethe serve --demo`). Loaded in
 * one transaction and only into a database that does not have it yet: running --demo again
 * never restores data that a forget removed.
 */

const NEWEST_LOGIN = Date.parse('2025-01-15T09:30:00Z');
const DEMO_LOGIN_EVENTS = 247;

const ts = (iso: string) => new Date(iso);

export async function loadDemoData(knex: Knex): Promise<'loaded' | 'present'> {
  return knex.transaction(async (trx) => {
    await lockKey(trx, 'lethe:demo-data');
    const present: unknown = await trx('users').where({ id: 'user-id-123' }).first();
    if (present !== undefined) return 'present';

    await trx('organizations').insert([
      { id: 'org-id-456', slug: 'acme-corp', name: 'Acme Corp', created_at: ts('2024-01-10T09:00:00Z') },
      { id: 'org-id-789', slug: 'dev-team', name: 'Dev Team', created_at: ts('2024-02-01T09:00:00Z') },
    ]);
    await trx('users').insert([
      {
        id: 'user-id-123',
        email: 'user@example.com',
        password_hash: '$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$ZGVtby1oYXNo',
        created_at: ts('2024-06-15T10:00:00Z'),
      },
      {
        id: 'member-user-id-456',
        email: 'member@example.com',
        password_hash: '$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$bWVtYmVy',
        created_at: ts('2024-07-01T08:00:00Z'),
      },
      { id: 'owner-user-id-1', email: 'owner1@example.com', password_hash: null, created_at: ts('2024-01-10T09:00:00Z') },
      { id: 'owner-user-id-2', email: 'owner2@example.com', password_hash: null, created_at: ts('2024-01-10T09:00:00Z') },
      { id: 'platform-owner-id', email: 'platform@example.com', password_hash: null, is_platform_owner: true, created_at: ts('2023-12-01T09:00:00Z') },
    ]);
    await trx('memberships').insert([
      { user_id: 'user-id-123', organization_id: 'org-id-456', role: 'admin', joined_at: ts('2024-06-15T10:05:00Z') },
      { user_id: 'user-id-123', organization_id: 'org-id-789', role: 'member', joined_at: ts('2024-08-20T14:30:00Z') },
      { user_id: 'member-user-id-456', organization_id: 'org-id-456', role: 'member', joined_at: ts('2024-07-01T08:10:00Z') },
      { user_id: 'owner-user-id-1', organization_id: 'org-id-456', role: 'owner', joined_at: ts('2024-01-10T09:00:00Z') },
      { user_id: 'owner-user-id-2', organization_id: 'org-id-456', role: 'owner', joined_at: ts('2024-01-10T09:00:00Z') },
      { user_id: 'owner-user-id-2', organization_id: 'org-id-789', role: 'owner', joined_at: ts('2024-02-01T09:00:00Z') },
    ]);
    await trx.batchInsert('login_events', demoLoginEvents(), 500);
    await trx('login_events').insert({
      id: 'login-event-member-1',
      user_id: 'member-user-id-456',
      timestamp: ts('2025-01-10T12:00:00Z'),
      ip_address: '198.51.100.7',
      user_agent: 'Mozilla/5.0 (X11; Linux x86_64)',
      provider: 'password',
      success: true,
      risk_score: 5,
      risk_factors: '[]',
      geo_country: 'DE',
      geo_city: 'Berlin',
    });
    await trx('oauth_identities').insert([
      {
        id: 'oauth-1',
        user_id: 'user-id-123',
        provider: 'github',
        provider_user_id: 'github-123456',
        access_token: 'gho_demoAccessToken',
        refresh_token: 'ghr_demoRefreshToken',
        linked_at: ts('2024-06-15T10:00:00Z'),
      },
      {
        id: 'oauth-2',
        user_id: 'user-id-123',
        provider: 'google',
        provider_user_id: 'google-789012',
        access_token: 'ya29.demoAccessToken',
        refresh_token: '1//demoRefreshToken',
        linked_at: ts('2024-07-10T14:20:00Z'),
      },
    ]);
    await trx('mfa_secrets').insert({ user_id: 'user-id-123', secret: 'enc:JBSWY3DPEHPK3PXP', created_at: ts('2024-08-01T16:00:00Z') });
    await trx('mfa_recovery_codes').insert(
      [1, 2, 3, 4].map((n) => ({
        id: `recovery-${n}`,
        user_id: 'user-id-123',
        code_hash: `sha256:demo-recovery-${n}`,
        used_at: n === 1 ? ts('2024-12-20T11:45:00Z') : null,
      })),
    );
    await trx('mfa_events').insert([
      { id: 'mfa-event-1', user_id: 'user-id-123', event_type: 'totp_enabled', success: true, timestamp: ts('2024-08-01T16:00:00Z') },
      { id: 'mfa-event-2', user_id: 'user-id-123', event_type: 'totp_verified', success: true, timestamp: ts('2025-01-15T09:31:00Z') },
      { id: 'mfa-event-3', user_id: 'user-id-123', event_type: 'recovery_code_used', success: true, timestamp: ts('2024-12-20T11:45:00Z') },
    ]);
    await trx('passkeys').insert({
      id: 'passkey-id-xyz',
      user_id: 'user-id-123',
      name: 'My YubiKey 5',
      credential_id: 'cred-demo-xyz',
      public_key: 'pQECAyYgASFYIDemoPublicKey',
      aaguid: 'fa2b99dc-9e39-4257-8f92-4a30d23c4118',
      backup_eligible: false,
      created_at: ts('2024-09-15T10:00:00Z'),
      last_used_at: ts('2025-01-14T08:30:00Z'),
    });
    await trx('sessions').insert([
      {
        id: 'session-1',
        user_id: 'user-id-123',
        token_hash: 'sha256:demo-session-1',
        ip_address: '203.0.113.42',
        user_agent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)',
        created_at: ts('2025-01-15T09:30:00Z'),
        expires_at: ts('2025-02-14T09:30:00Z'),
      },
      {
        id: 'session-2',
        user_id: 'user-id-123',
        token_hash: 'sha256:demo-session-2',
        ip_address: '203.0.113.50',
        user_agent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)',
        created_at: ts('2025-01-12T07:00:00Z'),
        expires_at: ts('2025-02-11T07:00:00Z'),
      },
    ]);
    await trx('device_trust_tokens').insert({
      id: 'device-1',
      user_id: 'user-id-123',
      token_hash: 'sha256:demo-device-1',
      created_at: ts('2024-10-01T10:00:00Z'),
      expires_at: ts('2024-12-30T10:00:00Z'),
    });
    await trx('audit_log').insert([
      {
        event_type: 'user_login',
        actor_id: 'user-id-123',
        target_id: 'user-id-123',
        details: JSON.stringify({ provider: 'github' }),
        ip_address: '203.0.113.42',
        user_agent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)',
        timestamp: ts('2025-01-15T09:30:00Z'),
      },
      {
        event_type: 'member_role_changed',
        actor_id: 'owner-user-id-1',
        target_id: 'user-id-123',
        details: JSON.stringify({ role: 'admin' }),
        ip_address: '198.51.100.1',
        user_agent: 'Mozilla/5.0 (Windows NT 10.0)',
        timestamp: ts('2024-06-15T10:05:00Z'),
      },
      {
        event_type: 'email_changed',
        actor_id: 'user-id-123',
        target_id: 'user-id-123',
        details: JSON.stringify({ old_email: 'user.old@example.com', new_email: 'user@example.com' }),
        ip_address: '203.0.113.42',
        user_agent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)',
        timestamp: ts('2024-09-01T08:00:00Z'),
      },
    ]);
    return 'loaded';
  });
}

/** 247 login events for user-id-123, one a day back from the newest, `login-event-abc`. */
function demoLoginEvents(): Array<Record<string, unknown>> {
  const events: Array<Record<string, unknown>> = [
    {
      id: 'login-event-abc',
      user_id: 'user-id-123',
      timestamp: new Date(NEWEST_LOGIN),
      ip_address: '203.0.113.42',
      user_agent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)...',
      provider: 'github',
      success: true,
      risk_score: 15,
      risk_factors: '["new_device"]',
      geo_country: 'US',
      geo_city: 'San Francisco',
    },
  ];
  for (let n = 1; n < DEMO_LOGIN_EVENTS; n++) {
    events.push({
      id: `login-event-${String(n).padStart(3, '0')}`,
      user_id: 'user-id-123',
      timestamp: new Date(NEWEST_LOGIN - n * 86_400_000),
      ip_address: `203.0.113.${(n % 200) + 1}`,
      user_agent: n % 3 === 0 ? 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)' : 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)',
      provider: n % 2 === 0 ? 'github' : 'google',
      success: n % 17 !== 0,
      risk_score: n % 10,
      risk_factors: '[]',
      geo_country: 'US',
      geo_city: 'San Francisco',
    });
  }
  return events;
}
