import type { Knex } from 'knex';

/**
 * The identity schema of an SSO platform that the default data map (datamaps/identity.yaml)
 * describes. A platform that already has these tables does not run this migration.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('users', (t) => {
    t.text('id').primary();
    t.text('email').notNullable();
    t.text('password_hash');
    t.boolean('is_platform_owner').notNullable().defaultTo(false);
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
  // Live emails are unique; anonymized ones only need to be unlikely to collide.
  await knex.raw(`CREATE UNIQUE INDEX users_email_live ON users (lower(email)) WHERE email NOT LIKE '%@deleted.local'`);

  await knex.schema.createTable('organizations', (t) => {
    t.text('id').primary();
    t.text('slug').notNullable().unique();
    t.text('name');
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });

  await knex.schema.createTable('memberships', (t) => {
    t.text('user_id').notNullable().references('users.id');
    t.text('organization_id').notNullable().references('organizations.id');
    t.text('role').notNullable();
    t.timestamp('joined_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.primary(['user_id', 'organization_id']);
  });

  await knex.schema.createTable('login_events', (t) => {
    t.text('id').primary();
    t.text('user_id').notNullable().references('users.id');
    t.timestamp('timestamp', { useTz: true }).notNullable();
    t.text('ip_address');
    t.text('user_agent');
    t.text('provider');
    t.boolean('success').notNullable();
    t.integer('risk_score');
    t.text('risk_factors');
    t.text('geo_country');
    t.text('geo_city');
    t.index(['user_id', 'timestamp'], 'login_events_user_time');
  });

  await knex.schema.createTable('oauth_identities', (t) => {
    t.text('id').primary();
    t.text('user_id').notNullable().references('users.id');
    t.text('provider').notNullable();
    t.text('provider_user_id').notNullable();
    t.text('access_token');
    t.text('refresh_token');
    t.timestamp('linked_at', { useTz: true }).notNullable();
    t.index(['user_id']);
  });

  await knex.schema.createTable('mfa_secrets', (t) => {
    t.text('user_id').primary().references('users.id');
    t.text('secret').notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });

  await knex.schema.createTable('mfa_recovery_codes', (t) => {
    t.text('id').primary();
    t.text('user_id').notNullable().references('users.id');
    t.text('code_hash').notNullable();
    t.timestamp('used_at', { useTz: true });
    t.index(['user_id']);
  });

  await knex.schema.createTable('mfa_events', (t) => {
    t.text('id').primary();
    t.text('user_id').notNullable().references('users.id');
    t.text('event_type').notNullable();
    t.boolean('success').notNullable();
    t.timestamp('timestamp', { useTz: true }).notNullable();
    t.index(['user_id']);
  });

  await knex.schema.createTable('passkeys', (t) => {
    t.text('id').primary();
    t.text('user_id').notNullable().references('users.id');
    t.text('name').notNullable();
    t.text('credential_id').notNullable();
    t.text('public_key').notNullable();
    t.text('aaguid');
    t.boolean('backup_eligible').notNullable().defaultTo(false);
    t.timestamp('created_at', { useTz: true }).notNullable();
    t.timestamp('last_used_at', { useTz: true });
    t.index(['user_id']);
  });

  await knex.schema.createTable('sessions', (t) => {
    t.text('id').primary();
    t.text('user_id').notNullable().references('users.id');
    t.text('token_hash').notNullable();
    t.text('ip_address');
    t.text('user_agent');
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('expires_at', { useTz: true }).notNullable();
    t.index(['user_id']);
  });

  await knex.schema.createTable('device_trust_tokens', (t) => {
    t.text('id').primary();
    t.text('user_id').notNullable().references('users.id');
    t.text('token_hash').notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('expires_at', { useTz: true }).notNullable();
    t.index(['user_id']);
  });

  await knex.schema.createTable('audit_log', (t) => {
    t.bigIncrements('id');
    t.text('event_type').notNullable();
    t.text('actor_id');
    t.text('target_id');
    t.jsonb('details');
    t.text('ip_address');
    t.text('user_agent');
    t.timestamp('timestamp', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.index(['actor_id']);
    t.index(['target_id']);
  });
}

export async function down(knex: Knex): Promise<void> {
  for (const table of [
    'audit_log',
    'device_trust_tokens',
    'sessions',
    'passkeys',
    'mfa_events',
    'mfa_recovery_codes',
    'mfa_secrets',
    'oauth_identities',
    'login_events',
    'memberships',
    'organizations',
    'users',
  ]) {
    await knex.schema.dropTableIfExists(table);
  }
}
