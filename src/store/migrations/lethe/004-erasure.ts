import type { Knex } from 'knex';

/**
 * Erasure reaches Lethe's own records. Each stored export gets its own data key, wrapped by
 * LETHE_ARTIFACT_KEY and kept apart from the chunks: a forget deletes the key, so copies of the
 * chunks (in backups too) can no longer be decrypted. Requests made on someone's behalf record
 * who asked. Published outbox rows are deleted after a retention; the index finds them.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('lethe_export_artifact_keys', (t) => {
    t.uuid('request_id').primary().references('lethe_privacy_requests.id');
    t.binary('nonce').notNullable();
    t.binary('tag').notNullable();
    t.binary('wrapped_key').notNullable();
  });
  await knex.schema.alterTable('lethe_export_artifacts', (t) => {
    // 'master': chunks sealed with LETHE_ARTIFACT_KEY itself (artifacts stored before this
    // migration); 'data-key': sealed with the artifact's own key in lethe_export_artifact_keys.
    t.text('key_scheme').notNullable().defaultTo('master');
  });
  await knex.schema.alterTable('lethe_privacy_requests', (t) => {
    t.text('requested_by');
  });
  await knex.raw('CREATE INDEX lethe_outbox_sent ON lethe_outbox (sent_at) WHERE sent_at IS NOT NULL');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('DROP INDEX IF EXISTS lethe_outbox_sent');
  await knex.schema.alterTable('lethe_privacy_requests', (t) => t.dropColumn('requested_by'));
  await knex.schema.alterTable('lethe_export_artifacts', (t) => t.dropColumn('key_scheme'));
  await knex.schema.dropTableIfExists('lethe_export_artifact_keys');
}
