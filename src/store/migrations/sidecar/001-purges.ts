import type { Knex } from 'knex';

/** In a downstream service's database: one row per privacy request already purged there. */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('lethe_purges', (t) => {
    t.uuid('request_id').primary();
    t.text('subject_id').notNullable();
    t.jsonb('rows_affected').notNullable();
    t.timestamp('purged_at', { useTz: true }).notNullable();
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('lethe_purges');
}
