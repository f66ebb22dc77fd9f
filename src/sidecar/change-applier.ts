import type { JetStreamClient, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { CryptoKey } from 'jose';
import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { FailedPreconditionError } from '../errors.js';
import { type ChangeEvent, type ChangeReceipt, type RectifiedEvent, parseChangeEvent } from '../events/cloudevents.js';
import { RECTIFIED_TYPE } from '../events/subjects.js';
import { fetchChangeValues } from '../events/change-values.js';
import { decideOnFailure, retryDelayMs } from '../events/delivery-policy.js';
import { keepAlive, settle } from '../events/durable-worker.js';
import { lockKey } from '../store/advisory-lock.js';
import type { TableRows } from '../store/ledger.js';
import { subjectLockKey } from '../privacy/locks.js';
import { ChangeRefused, type RectifyPlan, applyRectify } from '../privacy/rectify.js';
import { publishChangeReceipt, safeErrorSummary } from './receipts.js';

export interface ChangeApplierOptions {
  readonly knex: Knex;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly plan: RectifyPlan;
  readonly service: string;
  /** The server's export key (public): it signs rectification values too. Unset: rectifications fail with a receipt saying so. */
  readonly verifyKey: CryptoKey | undefined;
  readonly ackWaitMs: number;
  readonly maxDeliveries: number;
  readonly retryBaseMs: number;
  readonly logger: Logger;
}

/** What applying one change here came to. */
type Outcome = { readonly status: 'applied' | 'skipped'; readonly rowsAffected: readonly TableRows[]; readonly note?: string };

const PUBLISH_TIMEOUT_MS = 10_000;
const VALUES_TIMEOUT_MS = 5_000;

/**
 * Applies rectifications and processing choices to the service's own database, once per request,
 * and confirms each with a receipt on privacy.v1.change.applied.<service>:
 *
 * - Rectified: the new values come from the server (change-values.ts), then the service's own
 *   data map's rectify columns change in one transaction, each field only over an older version.
 * - Processing: the subject's flags per purpose go into lethe_processing_flags, over older versions only.
 * - A subject this service has purged gets nothing back: the change is `skipped`.
 * - A value the service's rules or constraints refuse is a `failed` receipt with the reason, at once;
 *   other failures (database, server away) are retried with backoff, then `failed`.
 */
export class ChangeApplier {
  constructor(private readonly o: ChangeApplierOptions) {}

  async handle(msg: JsMsg): Promise<void> {
    const o = this.o;
    const deliveries = msg.info.deliveryCount;
    const event = parseChangeEvent(msg.data);
    if (event === undefined) {
      o.logger.warn({ seq: msg.info.streamSequence, deliveries }, 'not a valid change event: terminated');
      settle(msg, 'term', o.logger);
      return;
    }
    const kind = isRectified(event) ? 'rectified' : 'processing';
    const { user_id: userId, request_id: requestId } = event.data;
    const log = o.logger.child({ requestId, kind, deliveries });
    let outcome: Outcome | { failed: string };
    try {
      outcome = await keepAlive(msg, o.ackWaitMs, () => this.apply(event));
    } catch (err) {
      const permanent = err instanceof ChangeRefused || err instanceof FailedPreconditionError;
      const decision = permanent ? { kind: 'give-up' as const } : decideOnFailure(deliveries, o.maxDeliveries, o.retryBaseMs);
      if (decision.kind === 'retry') {
        log.warn({ err: safeErrorSummary(err), retryInMs: decision.delayMs }, 'change not applied: will retry');
        settle(msg, 'nak', o.logger, decision.delayMs);
        return;
      }
      outcome = { failed: permanent ? (err as Error).message : `not applied after ${deliveries} deliveries: ${safeErrorSummary(err)}` };
    }
    const receipt: ChangeReceipt = {
      user_id: userId,
      request_id: requestId,
      service: o.service,
      kind,
      applied_at: new Date().toISOString(),
      ...('failed' in outcome
        ? { status: 'failed', rows_affected: [], error: outcome.failed.slice(0, 512) }
        : { status: outcome.status, rows_affected: [...outcome.rowsAffected], ...(outcome.note === undefined ? {} : { error: outcome.note }) }),
    };
    try {
      await publishChangeReceipt(o.js, receipt, PUBLISH_TIMEOUT_MS);
    } catch (err) {
      // Whatever happened here is recorded (or the change is retried): only the receipt is missing.
      const delayMs = retryDelayMs(deliveries, o.retryBaseMs);
      log.warn({ err: safeErrorSummary(err), retryInMs: delayMs }, 'change receipt not published: will retry');
      settle(msg, 'nak', o.logger, delayMs);
      return;
    }
    log.info({ status: receipt.status }, 'change receipt published');
    if ('failed' in outcome) settle(msg, 'term', o.logger);
    else await msg.ackAck().catch(() => undefined);
  }

  private async apply(event: ChangeEvent): Promise<Outcome> {
    const o = this.o;
    const { user_id: userId, request_id: requestId } = event.data;
    const prior = await this.recorded(o.knex, requestId);
    if (prior !== undefined) return prior;
    if (await this.erasedHere(o.knex, userId)) return this.record(o.knex, event, { status: 'skipped', rowsAffected: [], note: 'the subject was erased here' });

    let values: ReadonlyArray<[string, string]> = [];
    if (isRectified(event)) {
      const mine = event.data.fields.filter((f) => o.plan.fields.has(f));
      if (mine.length === 0) return this.record(o.knex, event, { status: 'applied', rowsAffected: [], note: 'this service holds none of these fields' });
      if (o.verifyKey === undefined)
        throw new FailedPreconditionError('the sidecar cannot check the server’s values: set LETHE_EXPORT_VERIFY_KEY_FILE to the server’s export key');
      const fetched = await fetchChangeValues(o.nc, { requestId, subjectId: userId, service: o.service, verifyKey: o.verifyKey, timeoutMs: VALUES_TIMEOUT_MS });
      if (fetched.kind === 'gone') return this.record(o.knex, event, { status: 'skipped', rowsAffected: [], note: `no values to apply: ${fetched.reason}` });
      values = fetched.values.filter(([f]) => mine.includes(f));
    }

    return o.knex.transaction(async (trx) => {
      await lockKey(trx, subjectLockKey(userId));
      const again = await this.recorded(trx, requestId);
      if (again !== undefined) return again;
      if (await this.erasedHere(trx, userId)) return this.record(trx, event, { status: 'skipped', rowsAffected: [], note: 'the subject was erased here' });
      const rowsAffected = isRectified(event) ? await this.rectify(trx, userId, event.data.version, values) : await this.setFlags(trx, event);
      return this.record(trx, event, { status: 'applied', rowsAffected });
    });
  }

  /** Applies the fields whose last applied version here is older than this change's. */
  private async rectify(trx: Knex.Transaction, userId: string, version: number, values: ReadonlyArray<[string, string]>): Promise<TableRows[]> {
    const seen = new Map(
      (
        (await trx('lethe_rectified_fields').where({ subject_id: userId }).select('field', 'version')) as Array<{ field: string; version: string | number }>
      ).map((r) => [r.field, Number(r.version)]),
    );
    const newer = values.filter(([f]) => (seen.get(f) ?? 0) < version);
    if (newer.length === 0) return [];
    const rows = await applyRectify(trx, this.o.plan, userId, newer);
    await trx('lethe_rectified_fields')
      .insert(newer.map(([field]) => ({ subject_id: userId, field, version })))
      .onConflict(['subject_id', 'field'])
      .merge(['version']);
    return rows;
  }

  private async setFlags(trx: Knex.Transaction, event: ChangeEvent): Promise<TableRows[]> {
    if (!('purposes' in event.data)) return [];
    const d = event.data;
    let changed = 0;
    for (const p of d.purposes) {
      const res = (await trx.raw(
        `INSERT INTO lethe_processing_flags (subject_id, purpose, restricted, objected, consent, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (subject_id, purpose) DO UPDATE SET restricted = EXCLUDED.restricted, objected = EXCLUDED.objected, consent = EXCLUDED.consent,
           updated_at = EXCLUDED.updated_at, version = EXCLUDED.version WHERE lethe_processing_flags.version < EXCLUDED.version`,
        [d.user_id, p.purpose, p.restricted, p.objected, p.consent, new Date(d.changed_at), d.version],
      )) as { rowCount?: number; affectedRows?: number };
      changed += Number(res.rowCount ?? res.affectedRows ?? 0);
    }
    return [{ table: 'lethe_processing_flags', action: 'update', rows: changed }];
  }

  private async erasedHere(db: Knex | Knex.Transaction, userId: string): Promise<boolean> {
    return (await db('lethe_purges').where({ subject_id: userId }).first()) !== undefined;
  }

  private async recorded(db: Knex | Knex.Transaction, requestId: string): Promise<Outcome | undefined> {
    const row = (await db('lethe_changes').where({ request_id: requestId }).first()) as
      { status: 'applied' | 'skipped'; rows_affected: TableRows[] | string } | undefined;
    if (row === undefined) return undefined;
    return { status: row.status, rowsAffected: typeof row.rows_affected === 'string' ? (JSON.parse(row.rows_affected) as TableRows[]) : row.rows_affected };
  }

  private async record(db: Knex | Knex.Transaction, event: ChangeEvent, outcome: Outcome): Promise<Outcome> {
    await db('lethe_changes')
      .insert({
        request_id: event.data.request_id,
        subject_id: event.data.user_id,
        kind: isRectified(event) ? 'rectified' : 'processing',
        status: outcome.status,
        rows_affected: JSON.stringify(outcome.rowsAffected),
        applied_at: new Date(),
      })
      .onConflict('request_id')
      .ignore();
    return outcome;
  }
}

const isRectified = (e: ChangeEvent): e is RectifiedEvent => e.type === RECTIFIED_TYPE;
