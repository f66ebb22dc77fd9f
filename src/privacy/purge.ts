import type { Knex } from 'knex';
import type { TableRows } from '../store/ledger.js';
import type { DataMap } from './data-map.js';
import { subjectLinks } from './data-map.js';
import { type ForgetPlan, compileForget } from './forget.js';
import { groupSteps, readTableFacts } from './forget-groups.js';
import { ROWS_AFFECTED, type TrailingWrite, applyForget } from './forget-run.js';
import { lockKeysStatement } from '../store/advisory-lock.js';
import { type Session, inSession } from '../store/session.js';
import type { ColumnTypes } from './sql.js';
import { subjectLockKey } from './locks.js';

export interface PurgeResult {
  readonly rowsAffected: readonly TableRows[];
  /** True when this request had already been purged here: nothing changed this time. */
  readonly replayed: boolean;
}

/** The sidecar's own tables a purge writes: the record of the purge, and the subject's flags and rectified fields it deletes. */
const PURGES = 'lethe_purges';
const DELETED = ['lethe_processing_flags', 'lethe_rectified_fields'] as const;

/**
 * Compiles a downstream service's forget once at start-up, its steps grouped into as few
 * statements as the database's foreign keys, triggers and rules allow (see forget-groups.ts),
 * and the sidecar's own writes joined to the last where nothing a step does can reach them.
 */
export async function preparePurgePlan(knex: Knex, map: DataMap, types: ColumnTypes, hashKey: Buffer | undefined, source?: string): Promise<ForgetPlan> {
  const plan = compileForget(map, types, hashKey, source);
  const trailing = [PURGES, ...DELETED];
  const facts = await readTableFacts(knex, [...plan.steps.flatMap((s) => [s.category.table, ...subjectLinks(s.category).map((l) => l.table)]), ...trailing]);
  const grouped = groupSteps(plan.steps, facts, trailing);
  const stepTables = new Set(plan.steps.map((s) => s.category.table));
  // A delete joins only where no step changes that table and no foreign key leads from it elsewhere.
  const joins = [...grouped.trailingInserts].filter((t) => !stepTables.has(t) && (t === PURGES || (facts.get(t)?.descendants.size ?? 1) === 0));
  return { ...plan, groups: grouped.groups, trailingInserts: new Set(joins) };
}

/**
 * The forget half of a data map, applied for one privacy request in a downstream service's
 * own database (the sidecar's engine entry). One transaction, in one round trip on PostgreSQL
 * for a plan of one group: the subject's lock, the forget, the sidecar's own writes (the record
 * in lethe_purges, the subject's processing flags and rectified fields deleted: an erased
 * subject's flags resurrect nothing) and COMMIT, sent at once.
 *
 * A request already purged here (a redelivered event) changes nothing more and returns the
 * first result: its record in lethe_purges makes the transaction fail on the primary key (the
 * lock taken first, so a purge of the same request still running has committed by then), the
 * transaction rolls back, and the first record is read.
 */
export async function purgeForRequest(knex: Knex, plan: ForgetPlan, input: { subjectId: string; requestId: string; now: Date }): Promise<PurgeResult> {
  const writes: TrailingWrite[] = [
    ...DELETED.map((table) => ({ table, sql: `DELETE FROM "${table}" WHERE "subject_id" = ?`, bindings: [input.subjectId] })),
    {
      table: PURGES,
      sql: `INSERT INTO "${PURGES}" ("request_id", "subject_id", "rows_affected", "purged_at") VALUES (?, ?, ${ROWS_AFFECTED}, ?)`,
      bindings: [input.requestId, input.subjectId, input.now],
    },
  ];
  try {
    const rowsAffected = await inSession(knex, (s) =>
      applyForget(
        withLeading(s, [lockKeysStatement([subjectLockKey(input.subjectId)])]),
        plan,
        input.subjectId,
        { timestamp: input.now.getTime(), requestId: input.requestId },
        writes,
        { commit: true },
      ),
    );
    return { rowsAffected, replayed: false };
  } catch (err) {
    if (!isPurgedBefore(err)) throw err;
  }
  const prior = (await knex(PURGES).where({ request_id: input.requestId }).first()) as { rows_affected: TableRows[] | string } | undefined;
  if (prior === undefined) throw new Error('the purge conflicted with an earlier one that is not recorded');
  const rows = typeof prior.rows_affected === 'string' ? (JSON.parse(prior.rows_affected) as TableRows[]) : prior.rows_affected;
  return { rowsAffected: rows.map((r) => ({ table: r.table, action: r.action, rows: Number(r.rows) })), replayed: true };
}

/** A unique violation of lethe_purges' primary key: this request was purged here before. */
function isPurgedBefore(err: unknown): boolean {
  const e = err as { code?: unknown; table?: unknown; constraint?: unknown } | null;
  return typeof e === 'object' && e !== null && e.code === '23505' && (e.table === PURGES || e.constraint === `${PURGES}_pkey`);
}

/** The session, with `statements` sent ahead of its first statements (their rows dropped). */
function withLeading(s: Session, statements: Parameters<Session['run']>[0]): Session {
  let leading = statements;
  return {
    trx: s.trx,
    async run(more, options) {
      const ahead = leading;
      leading = [];
      return (await s.run([...ahead, ...more], options)).slice(ahead.length);
    },
  };
}
