import type { Knex } from 'knex';
import type { TableRows } from '../store/ledger.js';
import type { ForgetPlan } from './forget.js';
import { applyForget } from './forget-run.js';
import { lockKey } from '../store/advisory-lock.js';
import { sessionOf } from '../store/session.js';
import { subjectLockKey } from './locks.js';

export interface PurgeResult {
  readonly rowsAffected: readonly TableRows[];
  /** True when this request had already been purged here: nothing changed this time. */
  readonly replayed: boolean;
}

/**
 * The forget half of a data map, applied for one privacy request in a downstream service's
 * own database (the sidecar's engine entry). One transaction; a request already purged here
 * (a redelivered event) changes nothing more and returns the first result.
 */
export async function purgeForRequest(knex: Knex, plan: ForgetPlan, input: { subjectId: string; requestId: string; now: Date }): Promise<PurgeResult> {
  return knex.transaction(async (trx) => {
    await lockKey(trx, subjectLockKey(input.subjectId));
    const prior = (await trx('lethe_purges').where({ request_id: input.requestId }).first()) as { rows_affected: TableRows[] | string } | undefined;
    if (prior !== undefined) {
      const rows = typeof prior.rows_affected === 'string' ? (JSON.parse(prior.rows_affected) as TableRows[]) : prior.rows_affected;
      return { rowsAffected: rows, replayed: true };
    }
    const rowsAffected = await applyForget(sessionOf(trx), plan, input.subjectId, { timestamp: input.now.getTime(), requestId: input.requestId });
    // The sidecar's own copies of the subject's choices go too: an erased subject's flags resurrect nothing.
    await trx('lethe_processing_flags').where({ subject_id: input.subjectId }).delete();
    await trx('lethe_rectified_fields').where({ subject_id: input.subjectId }).delete();
    await trx('lethe_purges').insert({
      request_id: input.requestId,
      subject_id: input.subjectId,
      rows_affected: JSON.stringify(rowsAffected),
      purged_at: input.now,
    });
    return { rowsAffected, replayed: false };
  });
}
