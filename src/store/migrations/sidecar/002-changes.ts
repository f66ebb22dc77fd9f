import type { Knex } from 'knex';

/**
 * In a downstream service's database: the changes (rectifications, processing choices) already
 * applied here, so a redelivered event changes nothing twice, and the current processing flags of
 * the service's subjects, one row per subject and purpose, for the service to read cheaply:
 * `SELECT restricted, objected, consent FROM lethe_processing_flags WHERE subject_id = $1 AND purpose = $2`.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('lethe_changes', (t) => {
    t.uuid('request_id').primary();
    t.text('subject_id').notNullable();
    t.text('kind').notNullable();
    t.text('status').notNullable();
    t.jsonb('rows_affected').notNullable();
    t.timestamp('applied_at', { useTz: true }).notNullable();
  });
  await knex.schema.createTable('lethe_processing_flags', (t) => {
    t.text('subject_id').notNullable();
    t.text('purpose').notNullable();
    t.boolean('restricted').notNullable();
    t.boolean('objected').notNullable();
    // 'given', 'withdrawn' or 'none'.
    t.text('consent').notNullable();
    t.timestamp('updated_at', { useTz: true }).notNullable();
    // The server's version of the subject's choices: an older event never overwrites a newer one.
    t.bigInteger('version').notNullable();
    t.primary(['subject_id', 'purpose']);
  });
  await knex.schema.createTable('lethe_rectified_fields', (t) => {
    t.text('subject_id').notNullable();
    t.text('field').notNullable();
    t.bigInteger('version').notNullable();
    t.primary(['subject_id', 'field']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('lethe_rectified_fields');
  await knex.schema.dropTableIfExists('lethe_processing_flags');
  await knex.schema.dropTableIfExists('lethe_changes');
}
