import type { Knex } from 'knex';
import type { PrivacyRequestRecord } from './ledger.js';
import { ledger } from './ledger.js';
import { artifacts } from './artifacts.js';

/** Server replicas and their heartbeats (migration 005). Times come from the database's clock, shared by every replica. */

const TABLE = 'lethe_workers';
const REQUESTS = 'lethe_privacy_requests';

export const workers = {
  /** Records a heartbeat, registering the worker when it is not (or no longer) known. */
  async beat(knex: Knex, id: string): Promise<void> {
    await knex(TABLE).insert({ id, started_at: knex.fn.now(), heartbeat_at: knex.fn.now() }).onConflict('id').merge({ heartbeat_at: knex.fn.now() });
  },

  async remove(knex: Knex, id: string): Promise<void> {
    await knex(TABLE).where({ id }).delete();
  },

  /**
   * Marks failed every running request whose worker is not `self` and has not beaten within
   * `staleMs` (with `othersAreDead`, any worker but `self`: one process owns the database).
   * Returns the requests it failed; forgets workers silent for a day. A StoreExport that died
   * leaves the chunks it had committed, sealed with a data key that was never stored: deleted here.
   */
  async failOrphans(knex: Knex, opts: { self: string; staleMs: number; othersAreDead: boolean; error: string }): Promise<PrivacyRequestRecord[]> {
    return knex.transaction(async (trx) => {
      const alive = trx(TABLE).select('id').where('id', opts.self);
      if (!opts.othersAreDead) alive.orWhere('heartbeat_at', '>', trx.raw(`now() - make_interval(secs => ?)`, [opts.staleMs / 1000]));
      const ids = (await trx(REQUESTS)
        .where({ state: 'running' })
        .andWhere((w) => {
          w.whereNull('worker_id').orWhereNotIn('worker_id', alive);
        })
        .forUpdate()
        .skipLocked()
        .pluck('id')) as string[];
      const failed: PrivacyRequestRecord[] = [];
      for (const id of ids) {
        await ledger.finish(trx, id, 'failed', new Date(), opts.error);
        await artifacts.deleteChunks(trx, id);
        const r = await ledger.get(trx, id);
        if (r !== undefined) failed.push(r);
      }
      await trx(TABLE).where('heartbeat_at', '<', trx.raw(`now() - interval '1 day'`)).delete();
      return failed;
    });
  },
};
