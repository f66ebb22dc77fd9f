import type { Knex } from 'knex';

/** Lethe's own tables: the request ledger and the record of subjects already erased. */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('lethe_privacy_requests', (t) => {
    t.uuid('id').primary();
    t.text('type').notNullable();
    t.text('subject_id').notNullable();
    t.text('requester').notNullable();
    t.text('reason').notNullable().defaultTo('');
    t.text('state').notNullable();
    t.text('idempotency_key').unique();
    t.timestamp('received_at', { useTz: true }).notNullable();
    t.timestamp('due_at', { useTz: true }).notNullable();
    t.timestamp('completed_at', { useTz: true });
    t.text('error');
    t.jsonb('result');
    t.index(['subject_id', 'received_at']);
    t.index(['state', 'due_at']);
  });

  // One row per subject erased in this database: a second forget finds it and changes nothing.
  await knex.schema.createTable('lethe_erasures', (t) => {
    t.text('subject_id').primary();
    t.uuid('request_id').notNullable();
    t.timestamp('anonymized_at', { useTz: true }).notNullable();
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('lethe_erasures');
  await knex.schema.dropTableIfExists('lethe_privacy_requests');
}
