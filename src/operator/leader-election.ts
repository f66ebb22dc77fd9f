import {
  type ConfigurationOptions,
  type CoordinationV1Api,
  Observable,
  type RequestContext,
  type ResponseContext,
  type V1Lease,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import { sleep } from '../runtime/backoff.js';

/**
 * Lease-based leader election, as client-go's: a candidate takes the Lease when it is free or
 * its holder stopped renewing it, renews it every retry period, and stops leading when it
 * cannot renew within the renew deadline. Expiry is judged by when this process last saw the
 * lease change, not by the holder's timestamps, so clock skew between replicas does not matter.
 *
 * Every API call has a deadline (a hung connection to the API server must not freeze the
 * elector): while leading, the renew deadline counted from the start of the last successful
 * renewal; otherwise the renew deadline itself. A leader that has not renewed within the renew
 * deadline stops leading then: it cannot be sure its renewals reached the API server, and the
 * lease duration (longer) is when others may take over.
 */

export interface LeaderElectionOptions {
  readonly namespace: string;
  readonly name: string;
  /** Unique per replica, e.g. the pod name. */
  readonly identity: string;
  readonly leaseDurationMs?: number;
  readonly renewDeadlineMs?: number;
  readonly retryPeriodMs?: number;
  /** Give the lease up on a graceful stop, so another replica takes over at once. */
  readonly releaseOnStop?: boolean;
  readonly logger: Logger;
}

export class LeaderElector {
  private leading = false;
  private observed: { holder: string; renewTime: string; resourceVersion: string } | undefined;
  private observedAt = 0;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryMs: number;

  constructor(
    private readonly api: CoordinationV1Api,
    private readonly opts: LeaderElectionOptions,
  ) {
    this.leaseMs = opts.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = opts.renewDeadlineMs ?? 10_000;
    this.retryMs = opts.retryPeriodMs ?? 2_000;
  }

  isLeader(): boolean {
    return this.leading;
  }

  /**
   * Campaigns until `signal` aborts. `lead` runs while this replica leads and receives a signal
   * that aborts when leadership is lost (or on stop); it is expected to wind down then.
   */
  async run(signal: AbortSignal, lead: (leadership: AbortSignal) => Promise<void>): Promise<void> {
    while (!signal.aborted) {
      const attempt = Date.now();
      if (await this.tryAcquireOrRenew(AbortSignal.any([signal, AbortSignal.timeout(this.renewDeadlineMs)]))) {
        this.leading = true;
        this.opts.logger.info({ lease: this.opts.name, identity: this.opts.identity }, 'became the leader');
        const leadership = new AbortController();
        const work = lead(leadership.signal).catch((err: unknown) => this.opts.logger.error({ err: errorSummary(err) }, 'leader work failed'));
        await this.keepRenewing(signal, attempt);
        this.leading = false;
        leadership.abort();
        await work;
        if (signal.aborted) {
          if (this.opts.releaseOnStop === true) await this.release();
          return;
        }
        this.opts.logger.warn({ lease: this.opts.name }, 'lost the leadership');
      }
      await sleep(this.retryMs, signal);
    }
  }

  /**
   * Renews every retry period; returns on stop, or when no renewal succeeded within the renew
   * deadline of the start of the last one that did (`renewedAt`): each attempt is cut off then.
   */
  private async keepRenewing(signal: AbortSignal, renewedAt: number): Promise<void> {
    let lastRenew = renewedAt;
    while (!signal.aborted) {
      await sleep(Math.min(this.retryMs, Math.max(0, lastRenew + this.renewDeadlineMs - Date.now())), signal);
      if (signal.aborted) return;
      const attempt = Date.now();
      const left = lastRenew + this.renewDeadlineMs - attempt;
      if (left <= 0 || !(await this.tryAcquireOrRenew(AbortSignal.any([signal, AbortSignal.timeout(left)])))) {
        if (Date.now() >= lastRenew + this.renewDeadlineMs) {
          this.opts.logger.warn({ lease: this.opts.name, renewDeadlineMs: this.renewDeadlineMs }, 'could not renew the lease within the renew deadline');
          return;
        }
      } else {
        lastRenew = attempt;
      }
    }
  }

  private async tryAcquireOrRenew(deadline: AbortSignal): Promise<boolean> {
    const { namespace, name, identity } = this.opts;
    const options = withSignal(deadline);
    const now = new Date();
    const spec = { holderIdentity: identity, leaseDurationSeconds: Math.ceil(this.leaseMs / 1000), renewTime: microTime(now) };
    try {
      let lease: V1Lease;
      try {
        lease = await this.api.readNamespacedLease({ name, namespace }, options);
      } catch (err) {
        if ((err as { code?: unknown }).code !== 404) throw err;
        await this.api.createNamespacedLease(
          {
            namespace,
            body: { metadata: { name, namespace }, spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 } },
          },
          options,
        );
        this.observe(identity, now.toISOString(), '');
        return true;
      }
      const holder = lease.spec?.holderIdentity ?? '';
      const renewTime = String(lease.spec?.renewTime ?? '');
      const rv = lease.metadata?.resourceVersion ?? '';
      if (this.observed?.holder !== holder || this.observed.renewTime !== renewTime || this.observed.resourceVersion !== rv)
        this.observe(holder, renewTime, rv);
      const heldByOther = holder !== '' && holder !== identity;
      if (heldByOther && this.observedAt + this.leaseMs > Date.now()) return false;
      const transitions = (lease.spec?.leaseTransitions ?? 0) + (holder === identity ? 0 : 1);
      const updated = await this.api.replaceNamespacedLease(
        {
          name,
          namespace,
          body: {
            ...lease,
            spec: {
              ...lease.spec,
              ...spec,
              acquireTime: holder === identity && lease.spec?.acquireTime !== undefined ? microTime(new Date(lease.spec.acquireTime)) : microTime(now),
              leaseTransitions: transitions,
            },
          },
        },
        options,
      );
      this.observe(identity, String(updated.spec?.renewTime ?? ''), updated.metadata?.resourceVersion ?? '');
      return true;
    } catch (err) {
      // 409: another replica wrote the lease first; anything else: the API server is away.
      if ((err as { code?: unknown }).code !== 409) this.opts.logger.warn({ err: errorSummary(err), lease: name }, 'cannot read or update the lease');
      return false;
    }
  }

  private async release(): Promise<void> {
    const { namespace, name, identity } = this.opts;
    const options = withSignal(AbortSignal.timeout(this.renewDeadlineMs));
    try {
      const lease = await this.api.readNamespacedLease({ name, namespace }, options);
      if (lease.spec?.holderIdentity !== identity) return;
      await this.api.replaceNamespacedLease(
        { name, namespace, body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1 } } },
        options,
      );
    } catch (err) {
      this.opts.logger.warn({ err: errorSummary(err), lease: name }, 'cannot release the lease; it will expire');
    }
  }

  private observe(holder: string, renewTime: string, resourceVersion: string): void {
    this.observed = { holder, renewTime, resourceVersion };
    this.observedAt = Date.now();
  }
}

/** Leases carry MicroTime: RFC 3339 with exactly six fractional digits. */
function microTime(d: Date): never {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z') as never;
}

/** Request options that abort the HTTP request when `signal` does (the generated client's middleware hook). */
function withSignal(signal: AbortSignal): ConfigurationOptions {
  return {
    middleware: [
      {
        pre: (context: RequestContext) => {
          context.setSignal(signal);
          return new Observable(Promise.resolve(context));
        },
        post: (context: ResponseContext) => new Observable(Promise.resolve(context)),
      },
    ],
    middlewareMergeStrategy: 'append',
  };
}
