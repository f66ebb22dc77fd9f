import type { Knex } from 'knex';

/** The transactional outbox and the downstream confirmations of each forget. */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('lethe_outbox', (t) => {
    // The CloudEvent id, also the Nats-Msg-Id: JetStream drops a second publish of it.
    t.uuid('id').primary();
    t.text('subject').notNullable();
    t.text('payload').notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable();
    t.timestamp('sent_at', { useTz: true });
    t.integer('attempts').notNullable().defaultTo(0);
  });
  await knex.raw('CREATE INDEX lethe_outbox_pending ON lethe_outbox (created_at) WHERE sent_at IS NULL');

  await knex.schema.createTable('lethe_confirmations', (t) => {
    t.uuid('request_id').notNullable().references('lethe_privacy_requests.id');
    t.text('service').notNullable();
    t.text('status').notNullable();
    t.jsonb('rows_affected').notNullable();
    t.timestamp('purged_at', { useTz: true }).notNullable();
    t.timestamp('received_at', { useTz: true }).notNullable();
    t.text('error');
    t.primary(['request_id', 'service']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('lethe_confirmations');
  await knex.schema.dropTableIfExists('lethe_outbox');
}
