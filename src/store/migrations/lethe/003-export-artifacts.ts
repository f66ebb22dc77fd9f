import type { Knex } from 'knex';

/**
 * Stored exports (StoreExport): one description per export request and its document encrypted
 * in chunks. In the database, so that every server replica can serve and expire them.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('lethe_export_artifacts', (t) => {
    t.uuid('request_id').primary().references('lethe_privacy_requests.id');
    // Which LETHE_ARTIFACT_KEY encrypted it: the first 16 hex digits of the key's SHA-256.
    t.text('key_id').notNullable();
    t.text('sha256').notNullable();
    t.bigInteger('size_bytes').notNullable();
    t.integer('chunk_count').notNullable();
    t.jsonb('counts').notNullable();
    t.bigInteger('total_records').notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable();
    t.timestamp('expires_at', { useTz: true }).notNullable();
    t.text('state').notNullable();
    t.timestamp('deleted_at', { useTz: true });
  });
  await knex.raw(`CREATE INDEX lethe_export_artifacts_due ON lethe_export_artifacts (expires_at) WHERE state = 'available'`);

  await knex.schema.createTable('lethe_export_artifact_chunks', (t) => {
    t.uuid('request_id').notNullable().references('lethe_privacy_requests.id');
    t.integer('seq').notNullable();
    t.binary('nonce').notNullable();
    t.binary('tag').notNullable();
    t.binary('ciphertext').notNullable();
    t.primary(['request_id', 'seq']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('lethe_export_artifact_chunks');
  await knex.schema.dropTableIfExists('lethe_export_artifacts');
}
