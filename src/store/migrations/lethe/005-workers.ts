import type { Knex } from 'knex';

/**
 * Server replicas announce themselves with a heartbeat, and running requests name the replica
 * carrying them out: a request whose replica stopped beating (a crash, kill -9, a lost node) is
 * found by the others and marked failed instead of staying `running` for ever.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('lethe_workers', (t) => {
    t.uuid('id').primary();
    t.timestamp('started_at', { useTz: true }).notNullable();
    t.timestamp('heartbeat_at', { useTz: true }).notNullable();
  });
  await knex.schema.alterTable('lethe_privacy_requests', (t) => {
    t.uuid('worker_id');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('lethe_privacy_requests', (t) => t.dropColumn('worker_id'));
  await knex.schema.dropTableIfExists('lethe_workers');
}
