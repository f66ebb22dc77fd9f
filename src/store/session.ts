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

export type Rows = Array<Record<string, unknown>>;

/** A statement run as it is, through knex or in a knex transaction. */
export const rowsOf =
  (db: Knex | Knex.Transaction) =>
  async (s: Statement): Promise<Rows> =>
    ((await db.raw(s.sql, s.bindings as Knex.RawBinding[])) as { rows: Rows }).rows;

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
      for (const s of statements) out.push(await rowsOf(trx)(s));
      return out;
    },
  };
}

/** What an export's readers need of its snapshot's transaction (snapshot-reader.ts, row-cursor.ts). */
export interface SnapshotQueries {
  /** A statement run as it is. */
  raw(s: Statement): Promise<Rows>;
  /**
   * A named prepared statement on PostgreSQL (parsed and planned once per connection, and its
   * text sent once): for a statement run on every call whose text is long, such as an export's.
   * Embedded PGlite runs it as it is.
   */
  prepared(s: Statement): Promise<Rows>;
  /** The transaction's connection (a pg.Client on PostgreSQL: COPY reads from its socket). */
  connection(): Promise<unknown>;
}

/** A knex transaction as a snapshot's queries. */
export function queriesOf(trx: Knex.Transaction): SnapshotQueries {
  const raw = rowsOf(trx);
  // A transaction's client hands out the transaction's own connection.
  const connection = () => (trx.client as { acquireConnection(): Promise<unknown> }).acquireConnection();
  return {
    raw,
    connection,
    async prepared(s) {
      if (embedded(trx)) return raw(s);
      return ((await connection()) as pg.Client).query(prepared(s)).then((r) => r.rows as Rows);
    },
  };
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

/** The statements as one transaction of their own (one round trip on PostgreSQL); each one's rows. */
export function inOneTransaction(knex: Knex, statements: readonly Statement[]): Promise<Rows[]> {
  return inSession(knex, (s) => s.run(statements, { commit: true }));
}

class PipelinedSession implements Session {
  readonly trx = undefined;
  private state: 'idle' | 'open' | 'done' = 'idle';

  constructor(private readonly conn: pg.Client) {}

  async run(statements: readonly Statement[], options: { readonly commit?: boolean } = {}): Promise<Rows[]> {
    if (this.state === 'done') throw new Error('the transaction has ended');
    const begin: pg.QueryConfig[] = [];
    if (this.state === 'idle') begin.push(...beginOn(this.conn, 'BEGIN'));
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

/** A step of a pinned connection's round trip: a statement (prepared), or a transaction's control sent as it is. */
export type Step = Statement | { readonly control: 'BEGIN' | 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY' | 'COMMIT' };

/**
 * One pooled PostgreSQL connection held across round trips that each send several steps at once,
 * transactions opened and closed among them: an export sends its ledger entry (committed on its
 * own) with its snapshot's BEGIN and first read, and later the snapshot's COMMIT with the
 * transaction that records the outcome. `acquire` answers undefined on embedded PGlite.
 */
export class PinnedConnection {
  private inTransaction = false;
  private released = false;

  static async acquire(knex: Knex): Promise<PinnedConnection | undefined> {
    if (embedded(knex)) return undefined;
    return new PinnedConnection(knex, (await knex.client.acquireConnection()) as pg.Client);
  }

  private constructor(
    private readonly knex: Knex,
    private readonly conn: pg.Client,
  ) {}

  /** Still held, and its socket open (a COPY stopped part-way closes it). */
  get usable(): boolean {
    return !this.released && this.open;
  }

  private get open(): boolean {
    const c = this.conn as unknown as { _ending?: boolean; connection: { stream: { destroyed: boolean } } };
    return c._ending !== true && !c.connection.stream.destroyed;
  }

  /** Sends the steps at once and returns each statement's rows (a control step's are empty); throws the first failure. */
  async send(steps: readonly Step[]): Promise<Rows[]> {
    const results = await this.sendSettled(steps);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    return results.map((r) => (r.status === 'fulfilled' ? r.value : []));
  }

  /** Sends the steps at once and returns how each ended. */
  async sendSettled(steps: readonly Step[]): Promise<Array<PromiseSettledResult<Rows>>> {
    if (this.released) throw new Error('the connection was given back');
    const queries: pg.QueryConfig[] = [];
    const index: number[] = [];
    for (const step of steps) {
      index.push(queries.length);
      if (!('control' in step)) queries.push(prepared(step));
      else if (step.control === 'COMMIT') queries.push({ text: step.control });
      else queries.push(...beginOn(this.conn, step.control));
      if ('control' in step) this.inTransaction = step.control !== 'COMMIT';
    }
    const results = await pipeline(this.conn, queries);
    // Perhaps left open or aborted: release() rolls it back.
    if (results.some((r) => r.status === 'rejected')) this.inTransaction = true;
    return index.map((i): PromiseSettledResult<Rows> => {
      const r = results[i];
      if (r === undefined || r.status === 'rejected') return { status: 'rejected', reason: r?.reason };
      return { status: 'fulfilled', value: (r.value.rows ?? []) as Rows };
    });
  }

  /** The open transaction's queries, for a snapshot's readers. */
  queries(): SnapshotQueries {
    const conn = this.conn;
    return {
      raw: async (s) => (await conn.query({ text: numbered(s.sql), values: s.bindings as unknown[] })).rows as Rows,
      prepared: async (s) => (await conn.query(prepared(s))).rows as Rows,
      connection: async () => conn,
    };
  }

  /** Rolls back a transaction left open, and gives the connection back to the pool. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    try {
      if (this.inTransaction && this.open) await this.conn.query('ROLLBACK');
    } catch {
      // Broken: dropped below.
    } finally {
      // The pool learns of a closed socket only from its 'end' event, which may come after the
      // next acquire: marked here (as knex marks it then), the pool drops it instead of handing it out.
      if (!this.open) (this.conn as unknown as { __knex__disposed?: string }).__knex__disposed ??= 'closed by Lethe';
      await this.knex.client.releaseConnection(this.conn);
    }
  }
}

/**
 * BEGIN, after DISCARD PLANS when this connection's plans are due to be made again (see the top
 * of this file).
 */
function beginOn(conn: pg.Client, begin: string): pg.QueryConfig[] {
  const now = Date.now();
  const p = plans.get(conn) ?? { madeAt: now, used: 0, life: PLAN_LIFE_FIRST };
  plans.set(conn, p);
  p.used++;
  if (p.used <= p.life && now - p.madeAt < PLAN_LIFE_MS) return [{ text: begin }];
  Object.assign(p, { madeAt: now, used: 0, life: Math.min(2 * p.life, PLAN_LIFE_MAX) });
  return [{ text: 'DISCARD PLANS' }, { text: begin }];
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
    t = { name: `lethe_${createHash('sha256').update(s.sql).digest('hex').slice(0, 32)}`, text: numbered(s.sql) };
    texts.set(s.sql, t);
  }
  return { name: t.name, text: t.text, values: s.bindings as unknown[] };
}

function numbered(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

function embedded(knex: Knex | Knex.Transaction): boolean {
  return knex.client instanceof ClientPgLite;
}
