import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { type ArtifactRecord, artifacts } from './artifacts.js';

/** The request ledger: every export and forget, its dates and its outcome. */

export type RequestType = 'export' | 'forget' | 'rectify' | 'restrict' | 'lift_restriction' | 'withdraw_consent';
/** Requests that change the subject's data or choices and wait for every expected service to apply the change. */
const CHANGE_TYPES: readonly RequestType[] = ['rectify', 'restrict', 'lift_restriction', 'withdraw_consent'];
export type RequestState = 'running' | 'anonymized' | 'applied' | 'completed' | 'failed' | 'scheduled' | 'cancelled';
/** States in which a request is still being answered. */
export const OPEN_STATES: readonly RequestState[] = ['running', 'anonymized', 'applied', 'scheduled'];
/** States waiting only for downstream confirmations (overdue after the confirmation timeout). */
const CONFIRMING_STATES: readonly RequestState[] = ['anonymized', 'applied'];

/** What a change request changed: rectified fields, or purposes and the basis (restriction or objection). */
export interface RequestDetails {
  readonly fields?: readonly string[];
  readonly purposes?: readonly string[];
  readonly basis?: 'restriction' | 'objection';
}

export interface TableRows {
  readonly table: string;
  readonly action: 'update' | 'delete';
  readonly rows: number;
}

/** A downstream receipt as it arrives. */
export interface NewConfirmation {
  readonly requestId: string;
  readonly service: string;
  readonly status: 'purged' | 'failed' | 'applied' | 'skipped';
  readonly rowsAffected: readonly TableRows[];
  readonly purgedAt: Date;
  /** A receipt of a change (rectification, processing choice) rather than of a purge. */
  readonly change?: boolean;
  readonly error?: string | undefined;
}

export type ConfirmationOutcome = 'unknown-request' | 'recorded' | 'completed';

/**
 * purged/failed: a forget's receipt; exported/timed_out/failed: a service's part of an export;
 * applied/skipped/failed: a change's receipt (skipped: the subject was erased there).
 */
export type ConfirmationStatus = 'purged' | 'failed' | 'exported' | 'timed_out' | 'applied' | 'skipped';

interface Confirmation {
  readonly service: string;
  readonly status: ConfirmationStatus;
  readonly rowsAffected: readonly TableRows[];
  readonly purgedAt: Date;
  readonly error: string | null;
}

export interface PrivacyRequestRecord {
  readonly id: string;
  readonly type: RequestType;
  readonly subjectId: string;
  readonly requester: string;
  /** The person who asked, when the requester acted for someone (the operator). */
  readonly requestedBy: string | null;
  readonly reason: string;
  readonly state: RequestState;
  readonly idempotencyKey: string | null;
  readonly receivedAt: Date;
  readonly dueAt: Date;
  readonly completedAt: Date | null;
  readonly error: string | null;
  readonly rowsAffected: readonly TableRows[];
  readonly details: RequestDetails;
  readonly confirmations: readonly Confirmation[];
  /** Exports made with StoreExport: the stored artifact, once it is stored. */
  readonly artifact: ArtifactRecord | null;
  /** Scheduled requests: when they run. */
  readonly scheduledFor: Date | null;
  /** Set once the due date was extended: the due date before, and why. */
  readonly originalDueAt: Date | null;
  readonly extensionReason: string | null;
}

export interface Row {
  id: string;
  type: RequestType;
  subject_id: string;
  requester: string;
  requested_by: string | null;
  reason: string;
  state: RequestState;
  idempotency_key: string | null;
  received_at: Date | string;
  due_at: Date | string;
  completed_at: Date | string | null;
  error: string | null;
  result: StoredResult | string | null;
  scheduled_for?: Date | string | null;
  original_due_at?: Date | string | null;
  extension_reason?: string | null;
}

interface StoredResult {
  rows_affected?: TableRows[];
  details?: RequestDetails;
}

const date = (v: Date | string | null | undefined): Date | null => (v === null || v === undefined ? null : new Date(v));

export const TABLE = 'lethe_privacy_requests';

export function toRecord(r: Row): PrivacyRequestRecord {
  const result = typeof r.result === 'string' ? (JSON.parse(r.result) as StoredResult) : r.result;
  return {
    id: r.id,
    type: r.type,
    subjectId: r.subject_id,
    requester: r.requester,
    requestedBy: r.requested_by,
    reason: r.reason,
    state: r.state,
    idempotencyKey: r.idempotency_key,
    receivedAt: new Date(r.received_at),
    dueAt: new Date(r.due_at),
    completedAt: r.completed_at === null ? null : new Date(r.completed_at),
    error: r.error,
    rowsAffected: result?.rows_affected ?? [],
    details: result?.details ?? {},
    confirmations: [],
    artifact: null,
    scheduledFor: date(r.scheduled_for),
    originalDueAt: date(r.original_due_at),
    extensionReason: r.extension_reason ?? null,
  };
}

interface ConfirmationRow {
  request_id: string;
  service: string;
  status: ConfirmationStatus;
  rows_affected: TableRows[] | string;
  purged_at: Date | string;
  error: string | null;
}

async function withConfirmations(db: Knex | Knex.Transaction, records: PrivacyRequestRecord[]): Promise<PrivacyRequestRecord[]> {
  if (records.length === 0) return records;
  const ids = records.map((r) => r.id);
  const rows = (await db('lethe_confirmations').whereIn('request_id', ids).orderBy('service')) as ConfirmationRow[];
  return records.map((r) => ({
    ...r,
    confirmations: rows
      .filter((c) => c.request_id === r.id)
      .map((c) => ({
        service: c.service,
        status: c.status,
        rowsAffected: typeof c.rows_affected === 'string' ? (JSON.parse(c.rows_affected) as TableRows[]) : c.rows_affected,
        purgedAt: new Date(c.purged_at),
        error: c.error,
      })),
  }));
}

async function withArtifacts(db: Knex | Knex.Transaction, records: PrivacyRequestRecord[]): Promise<PrivacyRequestRecord[]> {
  const found = await artifacts.forRequests(
    db,
    records.filter((r) => r.type === 'export' && r.idempotencyKey !== null).map((r) => r.id),
  );
  return records.map((r) => ({ ...r, artifact: found.get(r.id) ?? null }));
}

async function withDetails(db: Knex | Knex.Transaction, records: PrivacyRequestRecord[]): Promise<PrivacyRequestRecord[]> {
  return withArtifacts(db, await withConfirmations(db, records));
}

export interface NewRequest {
  readonly id?: string | undefined;
  readonly type: RequestType;
  readonly subjectId: string;
  readonly requester: string;
  readonly requestedBy?: string | undefined;
  readonly reason: string;
  readonly state: RequestState;
  readonly idempotencyKey?: string | undefined;
  readonly receivedAt: Date;
  /** When the answer is due (the domain's rule: GDPR Art. 12(3)). */
  readonly dueAt: Date;
  readonly completedAt?: Date | undefined;
  readonly rowsAffected?: readonly TableRows[] | undefined;
  readonly details?: RequestDetails | undefined;
  /** The server replica carrying out a running request (see workers.failOrphans). */
  readonly workerId?: string | undefined;
  readonly scheduledFor?: Date | undefined;
}

export interface ListFilter {
  readonly subjectId?: string | undefined;
  readonly state?: RequestState | undefined;
  readonly overdueOnly?: boolean | undefined;
  /** Only open requests due before this time. */
  readonly dueBefore?: Date | undefined;
  /** Only requests this principal made or is the subject of. */
  readonly visibleTo?: string | undefined;
  readonly limit: number;
  /** Continue after this (received_at, id) position. */
  readonly after?: { receivedAt: Date; id: string } | undefined;
  readonly now: Date;
  /** A forget still waiting for downstream confirmations this long after receipt is overdue. */
  readonly confirmationTimeoutMs: number;
}

/** The ledger's columns but `result`, in the order of requestInsert's values. */
const REQUEST_COLUMNS = [
  'id',
  'type',
  'subject_id',
  'requester',
  'requested_by',
  'reason',
  'state',
  'idempotency_key',
  'received_at',
  'due_at',
  'completed_at',
  'error',
  'worker_id',
  'scheduled_for',
] as const;

/** A new request's columns but its result (the forget's statement writes that in SQL: ledger-sql.ts). */
function requestColumns(req: NewRequest) {
  return {
    id: req.id ?? randomUUID(),
    type: req.type,
    subject_id: req.subjectId,
    requester: req.requester,
    requested_by: req.requestedBy ?? null,
    reason: req.reason,
    state: req.state,
    idempotency_key: req.idempotencyKey ?? null,
    received_at: req.receivedAt,
    due_at: req.dueAt,
    completed_at: req.completedAt ?? null,
    error: null,
    worker_id: req.workerId ?? null,
    scheduled_for: req.scheduledFor ?? null,
  } satisfies Record<(typeof REQUEST_COLUMNS)[number], Knex.RawBinding>;
}

/** The INSERT per SQL of its result, so that each one's text is the same string every time. */
const insertSql = new Map<string, string>();

/**
 * The INSERT of a new request whose `result` is the SQL `resultSql` (`?` when it is bound: its
 * value then follows the columns' in `extra`). Also a part of the forget's statement (ledger-sql.ts).
 */
export function requestInsert(
  req: NewRequest,
  resultSql: string,
  extra: readonly Knex.RawBinding[] = [],
): { row: ReturnType<typeof requestColumns>; statement: { sql: string; bindings: Knex.RawBinding[] } } {
  let sql = insertSql.get(resultSql);
  if (sql === undefined) {
    const columns = [...REQUEST_COLUMNS, 'result'].map((c) => `"${c}"`).join(', ');
    sql = `INSERT INTO "${TABLE}" (${columns}) VALUES (${REQUEST_COLUMNS.map(() => '?').join(', ')}, ${resultSql})`;
    insertSql.set(resultSql, sql);
  }
  const row = requestColumns(req);
  return { row, statement: { sql, bindings: [...REQUEST_COLUMNS.map((c) => row[c]), ...extra] } };
}

function storedResult(req: NewRequest): StoredResult {
  return req.details === undefined ? { rows_affected: [...(req.rowsAffected ?? [])] } : { rows_affected: [...(req.rowsAffected ?? [])], details: req.details };
}

/** The INSERT of a new request, and the request as it will read once it is run. */
export function insertStatement(req: NewRequest): { statement: { sql: string; bindings: Knex.RawBinding[] }; record: PrivacyRequestRecord } {
  const result = storedResult(req);
  const { row, statement } = requestInsert(req, '?', [JSON.stringify(result)]);
  return { statement, record: toRecord({ ...row, result }) };
}

/** A request as it reads once inserted (with its id, as inserted), before any receipt or artifact. */
export function insertedRecord(req: NewRequest & { readonly id: string }): PrivacyRequestRecord {
  return toRecord({ ...requestColumns(req), result: storedResult(req) });
}

/** The UPDATE that closes a request: run alone by ledger.finish, or sent with others (ledger-sql.ts). */
export function finishStatement(id: string, state: 'completed' | 'failed', at: Date, error?: string): { sql: string; bindings: Knex.RawBinding[] } {
  return {
    sql: `UPDATE "${TABLE}" SET "state" = ?, "completed_at" = ?, "error" = ? WHERE "id" = ?`,
    bindings: [state, state === 'completed' ? at : null, error ?? null, id],
  };
}

export const ledger = {
  async insert(db: Knex | Knex.Transaction, req: NewRequest): Promise<PrivacyRequestRecord> {
    const { statement, record } = insertStatement(req);
    await db.raw(statement.sql, statement.bindings);
    return record;
  },

  async finish(db: Knex | Knex.Transaction, id: string, state: 'completed' | 'failed', at: Date, error?: string): Promise<void> {
    const s = finishStatement(id, state, at, error);
    await db.raw(s.sql, s.bindings);
  },

  /** An export whose earlier attempt never finished runs again under the same id. */
  async restart(db: Knex | Knex.Transaction, id: string, workerId: string | undefined): Promise<void> {
    await db(TABLE)
      .where({ id })
      .update({ state: 'running', completed_at: null, error: null, worker_id: workerId ?? null });
  },

  /** A request's row, locked until the transaction ends (a cancel against the scheduler). */
  async lock(trx: Knex.Transaction, id: string): Promise<PrivacyRequestRecord | undefined> {
    const row = (await trx(TABLE).where({ id }).forUpdate().first()) as Row | undefined;
    return row === undefined ? undefined : toRecord(row);
  },

  /** Scheduled requests whose time has come, locked; other replicas skip them. */
  async lockDue(trx: Knex.Transaction, now: Date, limit: number): Promise<PrivacyRequestRecord[]> {
    const rows = (await trx(TABLE)
      .where({ state: 'scheduled' })
      .andWhere('scheduled_for', '<=', now)
      .orderBy('scheduled_for')
      .limit(limit)
      .forUpdate()
      .skipLocked()) as Row[];
    return rows.map(toRecord);
  },

  async cancel(trx: Knex.Transaction, id: string, at: Date): Promise<void> {
    await trx(TABLE).where({ id }).update({ state: 'cancelled', completed_at: at });
  },

  async extend(trx: Knex.Transaction, id: string, dueAt: Date, originalDueAt: Date, reason: string): Promise<void> {
    await trx(TABLE).where({ id }).update({ due_at: dueAt, original_due_at: originalDueAt, extension_reason: reason });
  },

  /**
   * Open requests past their due date at `now`, and those due from `now` until before `soon`
   * (metrics): one scan, with an aggregate FILTER for each (PostgreSQL and PGlite alike).
   */
  async countOpenByDue(db: Knex | Knex.Transaction, now: Date, soon: Date): Promise<{ overdue: number; dueSoon: number }> {
    const rows = (await db(TABLE)
      .whereIn('state', OPEN_STATES)
      .select(
        db.raw('count(*) filter (where due_at < ?) as overdue', [now]),
        db.raw('count(*) filter (where due_at >= ? and due_at < ?) as due_soon', [now, soon]),
      )) as Array<{ overdue: number | string; due_soon: number | string }>;
    return { overdue: Number(rows[0]?.overdue ?? 0), dueSoon: Number(rows[0]?.due_soon ?? 0) };
  },

  /** The subject's forget waiting for its time, if any. */
  async scheduledForget(db: Knex | Knex.Transaction, subjectId: string): Promise<PrivacyRequestRecord | undefined> {
    const row = (await db(TABLE).where({ subject_id: subjectId, type: 'forget', state: 'scheduled' }).first()) as Row | undefined;
    return row === undefined ? undefined : toRecord(row);
  },

  async get(db: Knex | Knex.Transaction, id: string): Promise<PrivacyRequestRecord | undefined> {
    const row = (await db(TABLE).where({ id }).first()) as Row | undefined;
    return row === undefined ? undefined : (await withDetails(db, [toRecord(row)]))[0];
  },

  async byIdempotencyKey(db: Knex | Knex.Transaction, key: string): Promise<PrivacyRequestRecord | undefined> {
    const row = (await db(TABLE).where({ idempotency_key: key }).first()) as Row | undefined;
    return row === undefined ? undefined : toRecord(row);
  },

  async list(db: Knex | Knex.Transaction, f: ListFilter): Promise<PrivacyRequestRecord[]> {
    const q = db(TABLE).select('*');
    if (f.subjectId !== undefined) q.where('subject_id', f.subjectId);
    if (f.state !== undefined) q.where('state', f.state);
    if (f.overdueOnly === true) {
      const confirmBy = new Date(f.now.getTime() - f.confirmationTimeoutMs);
      // Knex's builders are thenables: the callbacks build in place and return nothing.
      q.where((w) => {
        w.where((w2) => {
          w2.whereIn('state', OPEN_STATES).andWhere('due_at', '<', f.now);
        }).orWhere((w2) => {
          w2.whereIn('state', CONFIRMING_STATES).andWhere('received_at', '<', confirmBy);
        });
      });
    }
    if (f.dueBefore !== undefined) q.whereIn('state', OPEN_STATES).andWhere('due_at', '<', f.dueBefore);
    if (f.visibleTo !== undefined) {
      const who = f.visibleTo;
      q.where((w) => {
        w.where('requester', who).orWhere('subject_id', who);
      });
    }
    if (f.after !== undefined) {
      const a = f.after;
      q.where((w) => {
        w.where('received_at', '<', a.receivedAt).orWhere((w2) => {
          w2.where('received_at', a.receivedAt).andWhere('id', '<', a.id);
        });
      });
    }
    const rows = (await q
      .orderBy([
        { column: 'received_at', order: 'desc' },
        { column: 'id', order: 'desc' },
      ])
      .limit(f.limit)) as Row[];
    return withDetails(db, rows.map(toRecord));
  },

  /**
   * Records a downstream service's receipt of a change (rectification, processing choice; purge
   * receipts: confirmations.ts). A change in state `applied` becomes `completed` once every
   * expected service has applied it (or had nothing to change), and `failed` when one could not;
   * a rectification's pending values are cleared once it is settled. Unknown requests are ignored
   * (another Lethe installation may share the stream); returns what happened, for logging.
   */
  async recordChangeConfirmation(knex: Knex, c: NewConfirmation, expectedServices: readonly string[], now: Date): Promise<ConfirmationOutcome> {
    return knex.transaction(async (trx) => {
      const request = (await trx(TABLE).where({ id: c.requestId }).forUpdate().first()) as Row | undefined;
      if (request === undefined || !CHANGE_TYPES.includes(request.type) || c.status === 'purged') return 'unknown-request';
      await trx('lethe_confirmations')
        .insert({
          request_id: c.requestId,
          service: c.service,
          status: c.status,
          rows_affected: JSON.stringify(c.rowsAffected),
          purged_at: c.purgedAt,
          received_at: now,
          error: c.error ?? null,
        })
        .onConflict(['request_id', 'service'])
        .merge(['status', 'rows_affected', 'purged_at', 'received_at', 'error']);
      if (request.state !== 'applied') return 'recorded';
      if (c.status === 'failed' && expectedServices.includes(c.service)) {
        await trx(TABLE)
          .where({ id: c.requestId })
          .update({ state: 'failed', error: `${c.service} could not apply the change: ${c.error ?? 'no reason given'}`.slice(0, 512) });
        await trx('lethe_rectifications').where({ request_id: c.requestId }).update({ pending_values: null });
        return 'recorded';
      }
      const confirmed = new Set(
        (await trx('lethe_confirmations').where({ request_id: c.requestId }).whereIn('status', ['applied', 'skipped']).pluck('service')) as string[],
      );
      if (!expectedServices.every((s) => confirmed.has(s))) return 'recorded';
      await trx(TABLE).where({ id: c.requestId }).update({ state: 'completed', completed_at: now });
      await trx('lethe_rectifications').where({ request_id: c.requestId }).update({ pending_values: null });
      return 'completed';
    });
  },
};

export interface DownstreamExportPart {
  readonly service: string;
  readonly status: 'exported' | 'timed_out' | 'failed';
  readonly error?: string | undefined;
}

/** Records what each downstream service contributed to an export (its part, or why not); a query builder. */
export function downstreamExportsInsert(db: Knex | Knex.Transaction, requestId: string, parts: readonly DownstreamExportPart[], at: Date): Knex.QueryBuilder {
  return db('lethe_confirmations')
    .insert(
      parts.map((p) => ({
        request_id: requestId,
        service: p.service,
        status: p.status,
        rows_affected: JSON.stringify([]),
        purged_at: at,
        received_at: at,
        error: p.error ?? null,
      })),
    )
    .onConflict(['request_id', 'service'])
    .merge(['status', 'purged_at', 'received_at', 'error']);
}
