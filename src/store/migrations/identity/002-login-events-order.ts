import type { Knex } from 'knex';

/**
 * The default data map exports a person's login events newest first, by (timestamp, id): an
 * index in that order lets PostgreSQL read them in order instead of sorting them all, which for
 * a person with a million events is most of the export's database time (bench/RESULTS.md).
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.alterTable('login_events', (t) => {
    t.index(['user_id', 'timestamp', 'id'], 'login_events_user_time_id');
    t.dropIndex(['user_id', 'timestamp'], 'login_events_user_time');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('login_events', (t) => {
    t.index(['user_id', 'timestamp'], 'login_events_user_time');
    t.dropIndex(['user_id', 'timestamp', 'id'], 'login_events_user_time_id');
  });
}
