import type { Knex } from 'knex';

/**
 * A person's own erasure is scheduled after a grace period (state `scheduled`, `scheduled_for`)
 * and may be cancelled meanwhile; a request's due date may be extended once (GDPR Art. 12(3)),
 * keeping the original and the reason.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.alterTable('lethe_privacy_requests', (t) => {
    t.timestamp('scheduled_for', { useTz: true });
    t.timestamp('original_due_at', { useTz: true });
    t.text('extension_reason');
  });
  await knex.raw(`CREATE INDEX lethe_privacy_requests_scheduled ON lethe_privacy_requests (scheduled_for) WHERE state = 'scheduled'`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('DROP INDEX IF EXISTS lethe_privacy_requests_scheduled');
  await knex.schema.alterTable('lethe_privacy_requests', (t) => {
    t.dropColumn('extension_reason');
    t.dropColumn('original_due_at');
    t.dropColumn('scheduled_for');
  });
}
