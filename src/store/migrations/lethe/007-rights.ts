import type { Knex } from 'knex';

/**
 * The rights beyond access and erasure. A rectification's new values wait in
 * lethe_rectifications only until every downstream service has taken them (then, and on a
 * forget, they are cleared). Restrictions and objections (Art. 18, 21) and consents (Art. 7) are
 * kept per purpose with who and when: lifting or withdrawing stamps the row, never deletes it.
 */
export async function up(knex: Knex): Promise<void> {
  // Events may reach a service in any order: each change carries the subject's next version, and a
  // service applies a change only over an older one.
  await knex.schema.createTable('lethe_change_versions', (t) => {
    t.text('subject_id').primary();
    t.bigInteger('version').notNullable();
  });
  // Keyed by the ledger's request id (written in the same transaction, after the change).
  await knex.schema.createTable('lethe_rectifications', (t) => {
    t.uuid('request_id').primary();
    t.text('subject_id').notNullable().index();
    t.jsonb('fields').notNullable();
    t.jsonb('pending_values');
  });
  await knex.schema.createTable('lethe_processing_limits', (t) => {
    t.uuid('id').primary();
    t.text('subject_id').notNullable();
    t.text('purpose').notNullable();
    // 'restriction' (Art. 18) or 'objection' (Art. 21).
    t.text('basis').notNullable();
    t.timestamp('since', { useTz: true }).notNullable();
    t.text('requested_by').notNullable();
    t.uuid('request_id').notNullable();
    t.timestamp('lifted_at', { useTz: true });
    t.text('lifted_by');
    t.uuid('lifted_request_id');
    t.index(['subject_id', 'since']);
  });
  await knex.raw(`CREATE UNIQUE INDEX lethe_processing_limits_active ON lethe_processing_limits (subject_id, purpose, basis) WHERE lifted_at IS NULL`);
  await knex.schema.createTable('lethe_consents', (t) => {
    t.uuid('id').primary();
    t.text('subject_id').notNullable();
    t.text('purpose').notNullable();
    t.text('text_version').notNullable();
    t.text('text_sha256');
    t.text('source').notNullable();
    t.timestamp('given_at', { useTz: true }).notNullable();
    t.text('given_by').notNullable();
    t.timestamp('withdrawn_at', { useTz: true });
    t.text('withdrawn_by');
    t.text('withdrawn_source');
    t.index(['subject_id', 'given_at']);
  });
  await knex.raw(`CREATE UNIQUE INDEX lethe_consents_active ON lethe_consents (subject_id, purpose) WHERE withdrawn_at IS NULL`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('lethe_consents');
  await knex.schema.dropTableIfExists('lethe_processing_limits');
  await knex.schema.dropTableIfExists('lethe_rectifications');
  await knex.schema.dropTableIfExists('lethe_change_versions');
}
