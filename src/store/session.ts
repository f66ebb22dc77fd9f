import { createHash } from 'node:crypto';
import type { Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import type pg from 'pg';

/**
 * A transaction for a hot path (a forget), in as few round trips as its statements' dependencies
 * allow. On PostgreSQL it holds one pooled connection and sends what it is given at once (pg's
 * pipeline mode: each statement still answered on its own, in order): BEGIN goes with the first
 * statements and COMMIT with the last, so a forget that reads, decides, then writes is two
 * round trips. Every statement is a named prepared statement there: each connection parses and
 * plans it once and PostgreSQL keeps the plan (a forget of the default data map is a statement
 * of twelve parts whose planning costs more than running it for a typical subject). A kept plan
 * does not follow tables that grow until autovacuum analyzes them again (a plan made while the
 * audit log was nearly empty scans it whole), so each connection drops its plans (DISCARD PLANS,
 * sent with a BEGIN) after 16, 32, 64 … transactions, then every 1,024 or every minute, and
 * makes them again from the tables as they are: often while Lethe's own tables are young and
 * grow by a row per forget, rarely later.
 * Embedded PGlite runs a knex transaction, one statement after another.
 */

/** SQL with `?` for its values. */
export interface Statement {
  readonly sql: string;
  readonly bindings: readonly Knex.RawBinding[];
}

type Rows = Array<Record<string, unknown>>;

export interface Session {
  /**
   * Runs the statements in order in the transaction and returns each one's rows. With `commit`,
   * the transaction commits right after them (within the same round trip on PostgreSQL); a
   * statement that fails rolls it back and is thrown.
   */
  run(statements: readonly Statement[], options?: { readonly commit?: boolean }): Promise<Rows[]>;
  /** The transaction as knex sees it, for query builders: undefined on a pipelined connection. */
  readonly trx: Knex.Transaction | undefined;
}

const PLAN_LIFE_MS = 60_000;
const PLAN_LIFE_FIRST = 16;
const PLAN_LIFE_MAX = 1_024;

/** The caller's knex transaction as a session: statements one after another (not prepared); the caller commits. */
export function sessionOf(trx: Knex.Transaction): Session {
  return {
    trx,
    async run(statements) {
      const out: Rows[] = [];
      for (const s of statements) out.push(((await trx.raw(s.sql, s.bindings as Knex.RawBinding[])) as { rows: Rows }).rows);
      return out;
    },
  };
}

/**
 * One statement in the caller's transaction, as a named prepared statement on PostgreSQL (parsed
 * and planned once per connection, and its text sent once): for a statement run on every call
 * whose text is long, such as an export's. Embedded PGlite runs it as it is.
 */
export async function queryPrepared(trx: Knex.Transaction, s: Statement): Promise<Rows> {
  if (embedded(trx)) return ((await trx.raw(s.sql, s.bindings as Knex.RawBinding[])) as { rows: Rows }).rows;
  // A transaction's client hands out the transaction's own connection.
  const conn = (await (trx.client as { acquireConnection(): Promise<unknown> }).acquireConnection()) as pg.Client;
  return (await conn.query(prepared(s))).rows as Rows;
}

/**
 * Runs `fn` in a transaction: pipelined on PostgreSQL unless `pipelined` is false (then, as on
 * PGlite, a knex transaction whose `trx` the session carries). Commits when `fn` returns (unless
 * it committed with its last statements), rolls back when it throws.
 */
export async function inSession<T>(knex: Knex, fn: (s: Session) => Promise<T>, options: { readonly pipelined?: boolean } = {}): Promise<T> {
  if (embedded(knex) || options.pipelined === false) return knex.transaction((trx) => fn(sessionOf(trx)));
  const conn = (await knex.client.acquireConnection()) as pg.Client;
  const session = new PipelinedSession(conn);
  try {
    const result = await fn(session);
    await session.end('COMMIT');
    return result;
  } catch (err) {
    await session.end('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    await knex.client.releaseConnection(conn);
  }
}

class PipelinedSession implements Session {
  readonly trx = undefined;
  private state: 'idle' | 'open' | 'done' = 'idle';

  constructor(private readonly conn: pg.Client) {}

  async run(statements: readonly Statement[], options: { readonly commit?: boolean } = {}): Promise<Rows[]> {
    if (this.state === 'done') throw new Error('the transaction has ended');
    const begin: pg.QueryConfig[] = [];
    if (this.state === 'idle') {
      const now = Date.now();
      const p = plans.get(this.conn) ?? { madeAt: now, used: 0, life: PLAN_LIFE_FIRST };
      p.used++;
      if (p.used > p.life || now - p.madeAt >= PLAN_LIFE_MS) {
        begin.push({ text: 'DISCARD PLANS' });
        Object.assign(p, { madeAt: now, used: 0, life: Math.min(2 * p.life, PLAN_LIFE_MAX) });
      }
      plans.set(this.conn, p);
      begin.push({ text: 'BEGIN' });
    }
    const commit = options.commit === true ? [{ text: 'COMMIT' }] : [];
    this.state = options.commit === true ? 'done' : 'open';
    const results = await pipeline(this.conn, [...begin, ...statements.map(prepared), ...commit]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    // A failure aborts the transaction: what follows it fails too, and COMMIT rolls back.
    if (failed !== undefined) throw failed.reason;
    return results.slice(begin.length, begin.length + statements.length).map((r) => (r.status === 'fulfilled' ? r.value.rows : []));
  }

  /** COMMIT or ROLLBACK, unless the transaction never began or already ended. */
  async end(how: 'COMMIT' | 'ROLLBACK'): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'done';
    const [r] = await pipeline(this.conn, [{ text: how }]);
    if (r?.status === 'rejected') throw r.reason;
  }
}

/**
 * Sends the queries at once (one write) and waits for every answer. The connection is in pipeline
 * mode only meanwhile: it is held by one session and idle before and after, and the knex pool's
 * other users (cursors, COPY) need it out of that mode. pg ends a pipelined connection whose
 * answer does not come within query_timeout, so the pool then discards it.
 */
async function pipeline(conn: pg.Client, queries: readonly pg.QueryConfig[]): Promise<Array<PromiseSettledResult<pg.QueryResult>>> {
  const c = conn as unknown as { pipeline: boolean; connection: { stream: { cork(): void; uncork(): void } } };
  c.pipeline = true;
  let pending: Array<Promise<pg.QueryResult>>;
  c.connection.stream.cork();
  try {
    pending = queries.map((q) => conn.query(q));
  } finally {
    c.connection.stream.uncork();
  }
  try {
    return await Promise.allSettled(pending);
  } finally {
    c.pipeline = false;
  }
}

/** Each connection's plans: when they were made (or last dropped), transactions since, transactions until they go. */
const plans = new WeakMap<pg.Client, { madeAt: number; used: number; life: number }>();

/** `?` numbered as $1, $2 … and a name that is a digest of the SQL, so that one name never stands for two statements. */
const texts = new Map<string, { name: string; text: string }>();
const MAX_TEXTS = 1_000;

function prepared(s: Statement): pg.QueryConfig {
  let t = texts.get(s.sql);
  if (t === undefined) {
    if (texts.size >= MAX_TEXTS) texts.clear();
    let n = 0;
    t = { name: `lethe_${createHash('sha256').update(s.sql).digest('hex').slice(0, 32)}`, text: s.sql.replace(/\?/g, () => `$${++n}`) };
    texts.set(s.sql, t);
  }
  return { name: t.name, text: t.text, values: s.bindings as unknown[] };
}

function embedded(knex: Knex | Knex.Transaction): boolean {
  return knex.client instanceof ClientPgLite;
}
