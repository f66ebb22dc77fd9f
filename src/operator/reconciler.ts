import { isDeepStrictEqual } from 'node:util';
import type { CustomObjectsApi } from '@kubernetes/client-node';
import { ClientError, Status } from 'nice-grpc';
import type { Logger } from 'pino';
import type { PrivacyClient } from '../client/privacy-client.js';
import { errorSummary } from '../errors.js';
import { type Failpoint, hitFailpoint } from '../runtime/failpoints.js';
import { sleep } from '../runtime/backoff.js';
import { type PrivacyRequest as LedgerEntry, ProcessingBasis } from '../gen/lethe/privacy/v1/privacy.js';
import { setCondition } from './conditions.js';
import type { EventRecorder } from './event-recorder.js';
import { GROUP, PLURAL, type PrivacyRequestResource, type PrivacyRequestStatus, VERSION, splitKey } from './privacy-request.js';
import { READY, ledgerStatus, refusedStatus, runningStatus, transitions } from './status.js';
import { type ReconcileResult, TerminalError } from './work-queue.js';

/**
 * Level-based reconciliation of one PrivacyRequest: read it from the cache, ask the
 * PrivacyService where its request stands, write the status through `/status`, record Events
 * for what changed. The resource's UID is the idempotency key, so a reconcile repeated after a
 * crash replays the first forget or export rather than running it again.
 */

export interface ReconcilerOptions {
  readonly cache: { get(namespace: string, name: string): PrivacyRequestResource | undefined };
  readonly privacy: PrivacyClient;
  readonly customObjects: CustomObjectsApi;
  readonly events: EventRecorder;
  readonly logger: Logger;
  readonly pollIntervalMs: number;
  readonly callTimeoutMs: number;
  readonly now?: () => Date;
  readonly failpoints?: ReadonlySet<Failpoint>;
}

/** Refusals that retrying cannot change: the request fails for good. */
const TERMINAL: ReadonlyMap<Status, string> = new Map([
  [Status.PERMISSION_DENIED, 'PermissionDenied'],
  [Status.NOT_FOUND, 'SubjectNotFound'],
  [Status.INVALID_ARGUMENT, 'InvalidRequest'],
  [Status.FAILED_PRECONDITION, 'FailedPrecondition'],
]);

/** A call still unanswered after this long is marked Running before its outcome is written. */
const RUNNING_AFTER_MS = 1_000;

/** An artifact is looked at again this long after its expiry (the server reports it expired from then on). */
const EXPIRY_GRACE_MS = 1_000;
const EXPIRY_RECHECK_MS = 5_000;

export class PrivacyRequestReconciler {
  private readonly now: () => Date;
  /**
   * For each key, the resourceVersion our last status write replaced. Until the watch brings the
   * written version, the cache still holds that one: acting on it would repeat the work and
   * end in a conflict, so the reconcile waits for the watch event instead.
   */
  private readonly superseded = new Map<string, string>();

  constructor(private readonly opts: ReconcilerOptions) {
    this.now = opts.now ?? (() => new Date());
  }

  readonly reconcile = async (key: string): Promise<ReconcileResult | undefined> => {
    const { namespace, name } = splitKey(key);
    const obj = this.opts.cache.get(namespace, name);
    const stale = this.superseded.get(key);
    if (stale !== undefined && stale === obj?.metadata.resourceVersion) return undefined;
    this.superseded.delete(key);
    // Gone, or going: nothing to converge. The ledger keeps the request either way.
    if (obj === undefined || obj.metadata.deletionTimestamp !== undefined) return undefined;

    const phase = obj.status?.phase;
    if (phase === 'Failed') return undefined;
    if (phase === 'Succeeded') return obj.spec.type === 'Export' ? this.watchExpiry(obj) : undefined;
    if (phase === 'WaitingForDownstream' && obj.status?.requestId !== undefined) return this.follow(obj, obj.status.requestId);
    return this.carryOut(obj);
  };

  /**
   * Pending or Running: (re)issue the call. A replay after a crash returns the first result. A
   * call that answers within RUNNING_AFTER_MS gets one status write (its outcome, from the ledger
   * entry the answer carries); a slower one is marked Running first, so `kubectl get` shows it.
   */
  private async carryOut(obj: PrivacyRequestResource): Promise<ReconcileResult | undefined> {
    let current = obj;
    const call = this.call(current);
    if (current.status?.phase !== 'Running') {
      const timer = new AbortController();
      const first = await Promise.race([
        call.then(
          () => 'answered',
          () => 'answered',
        ),
        sleep(RUNNING_AFTER_MS, timer.signal).then(() => 'slow'),
      ]);
      timer.abort();
      if (first === 'slow') current = await this.writeStatus(current, runningStatus(current, this.now()));
    }
    let answer: { requestId: string; entry: LedgerEntry | undefined };
    try {
      answer = await call;
    } catch (err) {
      return this.onCallFailed(current, err);
    }
    hitFailpoint(this.opts.failpoints ?? new Set(), 'operator-after-call');
    return answer.entry === undefined ? this.follow(current, answer.requestId) : this.mirror(current, answer.entry);
  }

  /** The PrivacyService call a request's kind asks for; the answer carries the ledger entry when the server sends it. */
  private async call(obj: PrivacyRequestResource): Promise<{ requestId: string; entry: LedgerEntry | undefined }> {
    const idempotencyKey = obj.metadata.uid ?? '';
    const { subjectId, reason, requestedBy = '' } = obj.spec;
    const signal = AbortSignal.timeout(this.opts.callTimeoutMs);
    const spec = obj.spec;
    if (spec.type === 'Forget') {
      const r = await this.opts.privacy.forgetUser(
        { userId: subjectId, reason: reason ?? 'GDPR Art. 17 erasure request (PrivacyRequest)', idempotencyKey, requestedBy, includeRequest: true },
        { signal },
      );
      return { requestId: r.requestId, entry: r.request };
    }
    if (spec.type === 'Restrict' || spec.type === 'LiftRestriction') {
      const input = {
        userId: subjectId,
        purposes: [...(spec.purposes ?? [])],
        basis: spec.basis === 'Objection' ? ProcessingBasis.PROCESSING_BASIS_OBJECTION : ProcessingBasis.PROCESSING_BASIS_RESTRICTION,
        reason: reason ?? '',
        idempotencyKey,
        requestedBy,
      };
      const r =
        spec.type === 'Restrict' ? await this.opts.privacy.restrictProcessing(input, { signal }) : await this.opts.privacy.liftRestriction(input, { signal });
      if (r.request === undefined) throw new Error('the PrivacyService answered without a request');
      return { requestId: r.request.id, entry: r.request };
    }
    const r = await this.opts.privacy.storeExport({ userId: subjectId, reason: reason ?? '', idempotencyKey, requestedBy, includeRequest: true }, { signal });
    return { requestId: r.requestId, entry: r.request };
  }

  /** Mirrors the ledger entry into the status; keeps polling while downstream confirmations are due. */
  private async follow(obj: PrivacyRequestResource, requestId: string): Promise<ReconcileResult | undefined> {
    let entry: LedgerEntry | undefined;
    try {
      entry = (await this.opts.privacy.getPrivacyRequest({ id: requestId }, { signal: AbortSignal.timeout(this.opts.callTimeoutMs) })).request;
    } catch (err) {
      return this.onCallFailed(obj, err);
    }
    if (entry === undefined) throw new Error('GetPrivacyRequest answered without a request');
    return this.mirror(obj, entry);
  }

  private async mirror(obj: PrivacyRequestResource, entry: LedgerEntry): Promise<ReconcileResult | undefined> {
    const updated = await this.writeStatus(obj, ledgerStatus(obj, entry, this.now()));
    if (updated.status?.phase === 'WaitingForDownstream' || updated.status?.phase === 'Running') return { requeueAfterMs: this.opts.pollIntervalMs };
    if (updated.status?.phase === 'Succeeded' && obj.spec.type === 'Export') return this.expiryRequeue(updated);
    return undefined;
  }

  /** A stored export: look again once it has expired, so the status says it was deleted. */
  private async watchExpiry(obj: PrivacyRequestResource): Promise<ReconcileResult | undefined> {
    const wait = this.untilExpiry(obj);
    if (wait === undefined) return undefined;
    if (wait > 0 || obj.status?.requestId === undefined) return this.expiryRequeue(obj);
    return this.follow(obj, obj.status.requestId);
  }

  /** Milliseconds until an available artifact should be looked at again; undefined when there is nothing to watch. */
  private untilExpiry(obj: PrivacyRequestResource): number | undefined {
    const artifact = obj.status?.artifact;
    if (artifact === undefined || artifact.state !== 'Available' || artifact.expiresAt === undefined) return undefined;
    return new Date(artifact.expiresAt).getTime() + EXPIRY_GRACE_MS - this.now().getTime();
  }

  /** Never sooner than EXPIRY_RECHECK_MS: when the server's clock is behind ours, it is asked again a little later, not in a loop. */
  private expiryRequeue(obj: PrivacyRequestResource): ReconcileResult | undefined {
    const wait = this.untilExpiry(obj);
    return wait === undefined ? undefined : { requeueAfterMs: Math.min(Math.max(wait, EXPIRY_RECHECK_MS), 2 ** 31 - 1) };
  }

  /** A refusal fails the request for good (status, then a TerminalError); anything else is retried. */
  private async onCallFailed(obj: PrivacyRequestResource, err: unknown): Promise<never> {
    if (err instanceof ClientError) {
      const reason = TERMINAL.get(err.code);
      // The server's messages never carry personal data beyond the subject id: safe for status and Events.
      if (reason !== undefined) {
        await this.writeStatus(obj, refusedStatus(obj, reason, err.details, this.now()));
        throw new TerminalError(`${reason}: ${err.details}`, { cause: err });
      }
      const message = `The PrivacyService answered ${Status[err.code]}: ${err.details}; retrying with backoff`;
      const generation = obj.metadata.generation ?? 0;
      const status = {
        ...obj.status,
        conditions: setCondition(
          obj.status?.conditions,
          { type: READY, status: 'False', reason: 'Retrying', message, observedGeneration: generation },
          this.now(),
        ),
      };
      await this.writeStatus(obj, status).catch((e: unknown) => this.opts.logger.debug({ err: errorSummary(e) }, 'could not record the retry'));
    }
    throw err;
  }

  /** Writes `status` through the status subresource (optimistic: a conflict requeues) and records its Events. */
  private async writeStatus(obj: PrivacyRequestResource, status: PrivacyRequestStatus): Promise<PrivacyRequestResource> {
    if (isDeepStrictEqual(obj.status ?? {}, status)) return obj;
    const { namespace = '', name = '' } = obj.metadata;
    const updated = (await this.opts.customObjects.replaceNamespacedCustomObjectStatus({
      group: GROUP,
      version: VERSION,
      plural: PLURAL,
      namespace,
      name,
      body: { ...obj, status },
    })) as PrivacyRequestResource;
    if (obj.metadata.resourceVersion !== undefined) this.superseded.set(`${namespace}/${name}`, obj.metadata.resourceVersion);
    // Events are best effort and never hold up the reconcile.
    for (const t of transitions(obj.status, status, obj.spec.type)) void this.opts.events.record(updated, t.type, t.reason, t.message);
    this.opts.logger.info({ resource: `${namespace}/${name}`, phase: status.phase, requestId: status.requestId }, 'status updated');
    return updated;
  }
}
