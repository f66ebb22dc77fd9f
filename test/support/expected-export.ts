/**
 * The reference's export of user-id-123 (ARCHITECTURE.md, reference document 002), with the demo
 * data's full field set. Login events are checked separately: 50 of 247, newest first.
 */
export const EXPECTED_USER_123 = {
  user_id: 'user-id-123',
  email: 'user@example.com',
  created_at: '2024-06-15T10:00:00Z',
  memberships: [
    { organization_id: 'org-id-456', organization_slug: 'acme-corp', role: 'admin', joined_at: '2024-06-15T10:05:00Z' },
    { organization_id: 'org-id-789', organization_slug: 'dev-team', role: 'member', joined_at: '2024-08-20T14:30:00Z' },
  ],
  login_events_count: 247,
  oauth_identities: [
    { provider: 'github', provider_user_id: 'github-123456', linked_at: '2024-06-15T10:00:00Z' },
    { provider: 'google', provider_user_id: 'google-789012', linked_at: '2024-07-10T14:20:00Z' },
  ],
  mfa_events: [
    { event_type: 'totp_enabled', timestamp: '2024-08-01T16:00:00Z', success: true },
    { event_type: 'totp_verified', timestamp: '2025-01-15T09:31:00Z', success: true },
    { event_type: 'recovery_code_used', timestamp: '2024-12-20T11:45:00Z', success: true },
  ],
  passkeys: [
    {
      id: 'passkey-id-xyz',
      name: 'My YubiKey 5',
      aaguid: 'fa2b99dc-9e39-4257-8f92-4a30d23c4118',
      backup_eligible: false,
      created_at: '2024-09-15T10:00:00Z',
      last_used_at: '2025-01-14T08:30:00Z',
    },
  ],
};

export const EXPECTED_NEWEST_LOGIN = {
  id: 'login-event-abc',
  timestamp: '2025-01-15T09:30:00Z',
  ip_address: '203.0.113.42',
  user_agent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)...',
  provider: 'github',
  success: true,
  risk_score: 15,
  risk_factors: '["new_device"]',
  geo_country: 'US',
  geo_city: 'San Francisco',
};

export const DOCUMENT_KEYS = [
  'user_id',
  'email',
  'created_at',
  'memberships',
  'login_events_count',
  'login_events',
  'oauth_identities',
  'mfa_events',
  'passkeys',
];
