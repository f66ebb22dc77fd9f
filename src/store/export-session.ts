import type { Knex } from 'knex';
import { PinnedConnection, type Rows, type SnapshotQueries, type Statement, type Step, inOneTransaction, queriesOf, rowsOf } from './session.js';

/**
 * Where one export's statements go, in as few round trips as their order allows. On PostgreSQL one
 * pooled connection is held for the export: the authorization facts are the first round trip; the
 * ledger entry (committed on its own), the snapshot's BEGIN and its first statement the second;
 * the rows are streamed; the snapshot's COMMIT and the transaction that records the outcome are
 * the third (bench/RESULTS.md, export-typical). Embedded PGlite runs the same statements one
 * after another, the snapshot in a knex transaction.
 */
export interface ExportSession {
  /** One statement, before the snapshot. */
  read(s: Statement): Promise<Rows>;
  /**
   * Runs `before` (each committed on its own), then opens a REPEATABLE READ, READ ONLY snapshot
   * and runs `first` in it (prepared); returns `first`'s rows.
   */
  openSnapshot(before: readonly Statement[], first: Statement | undefined): Promise<Rows>;
  /** The open snapshot's queries. */
  readonly snapshot: SnapshotQueries;
  /** openSnapshot's `before` statements were committed (whatever became of the snapshot). */
  readonly committedBefore: boolean;
  /** Commits the snapshot and gives its connection back (before waiting on something else). */
  endSnapshot(): Promise<void>;
  /** Commits the snapshot if it is still open, then runs `after` in a transaction of their own; gives the connection back. */
  finish(after: readonly Statement[]): Promise<void>;
  /** Rolls back a snapshot still open and gives its connection back. */
  release(): Promise<void>;
}

/** A REPEATABLE READ snapshot as a knex transaction, its mode sent with BEGIN (one round trip). */
export function snapshotTransaction(knex: Knex, opts: { readonly readOnly: boolean }): Promise<Knex.Transaction> {
  return knex.transaction(undefined, { isolationLevel: 'repeatable read', readOnly: opts.readOnly });
}

export async function openExportSession(knex: Knex): Promise<ExportSession> {
  const pinned = await PinnedConnection.acquire(knex);
  return pinned === undefined ? new KnexExportSession(knex) : new PinnedExportSession(knex, pinned);
}

const SNAPSHOT = { control: 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY' } as const;

class PinnedExportSession implements ExportSession {
  committedBefore = false;
  private open = false;
  private queries: SnapshotQueries | undefined;

  constructor(
    private readonly knex: Knex,
    private readonly conn: PinnedConnection,
  ) {}

  async read(s: Statement): Promise<Rows> {
    return (await this.conn.send([s]))[0] ?? [];
  }

  async openSnapshot(before: readonly Statement[], first: Statement | undefined): Promise<Rows> {
    const steps: Step[] = [...before, SNAPSHOT, ...(first === undefined ? [] : [first])];
    this.open = true;
    this.queries = this.conn.queries();
    const results = await this.conn.sendSettled(steps);
    this.committedBefore = results.slice(0, before.length).every((r) => r.status === 'fulfilled');
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    const last = results[steps.length - 1];
    return first !== undefined && last?.status === 'fulfilled' ? last.value : [];
  }

  get snapshot(): SnapshotQueries {
    if (this.queries === undefined) throw new Error('the snapshot is not open');
    return this.queries;
  }

  async endSnapshot(): Promise<void> {
    try {
      if (this.open) await this.conn.send([{ control: 'COMMIT' }]);
    } finally {
      this.open = false;
      await this.conn.release();
    }
  }

  async finish(after: readonly Statement[]): Promise<void> {
    // Once the connection is gone (given back, or closed by a COPY stopped part-way), on another.
    if (!this.conn.usable) {
      await this.conn.release();
      if (after.length > 0) await inOneTransaction(this.knex, after);
      return;
    }
    const steps: Step[] = [
      ...(this.open ? [{ control: 'COMMIT' } as const] : []),
      ...(after.length > 0 ? [{ control: 'BEGIN' } as const, ...after, { control: 'COMMIT' } as const] : []),
    ];
    this.open = false;
    try {
      if (steps.length > 0) await this.conn.send(steps);
    } finally {
      await this.conn.release();
    }
  }

  release(): Promise<void> {
    this.open = false;
    return this.conn.release();
  }
}

class KnexExportSession implements ExportSession {
  committedBefore = false;
  private trx: Knex.Transaction | undefined;
  private queries: SnapshotQueries | undefined;

  constructor(private readonly knex: Knex) {}

  read(s: Statement): Promise<Rows> {
    return rowsOf(this.knex)(s);
  }

  async openSnapshot(before: readonly Statement[], first: Statement | undefined): Promise<Rows> {
    for (const s of before) await this.read(s);
    this.committedBefore = true;
    this.trx = await snapshotTransaction(this.knex, { readOnly: true });
    this.queries = queriesOf(this.trx);
    return first === undefined ? [] : this.queries.prepared(first);
  }

  get snapshot(): SnapshotQueries {
    if (this.queries === undefined) throw new Error('the snapshot is not open');
    return this.queries;
  }

  async endSnapshot(): Promise<void> {
    if (this.trx !== undefined && !this.trx.isCompleted()) await this.trx.commit();
  }

  async finish(after: readonly Statement[]): Promise<void> {
    await this.endSnapshot();
    if (after.length > 0) await inOneTransaction(this.knex, after);
  }

  async release(): Promise<void> {
    if (this.trx !== undefined && !this.trx.isCompleted()) await this.trx.rollback().catch(() => undefined);
  }
}
