import type { CoordinationV1Api, V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import { sleep } from '../backoff.js';

/**
 * Lease-based leader election, as client-go's: a candidate takes the Lease when it is free or
 * its holder stopped renewing it, renews it every retry period, and stops leading when it
 * cannot renew within the renew deadline. Expiry is judged by when this process last saw the
 * lease change, not by the holder's timestamps, so clock skew between replicas does not matter.
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
      if (await this.tryAcquireOrRenew()) {
        this.leading = true;
        this.opts.logger.info({ lease: this.opts.name, identity: this.opts.identity }, 'became the leader');
        const leadership = new AbortController();
        const work = lead(leadership.signal).catch((err: unknown) => this.opts.logger.error({ err: errorSummary(err) }, 'leader work failed'));
        await this.keepRenewing(signal);
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

  /** Renews every retry period; returns when a renewal has failed for longer than the deadline, or on stop. */
  private async keepRenewing(signal: AbortSignal): Promise<void> {
    let lastRenew = Date.now();
    while (!signal.aborted) {
      await sleep(this.retryMs, signal);
      if (signal.aborted) return;
      if (await this.tryAcquireOrRenew()) lastRenew = Date.now();
      else if (Date.now() - lastRenew > this.renewDeadlineMs) return;
    }
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity } = this.opts;
    const now = new Date();
    const spec = { holderIdentity: identity, leaseDurationSeconds: Math.ceil(this.leaseMs / 1000), renewTime: microTime(now) };
    try {
      let lease: V1Lease;
      try {
        lease = await this.api.readNamespacedLease({ name, namespace });
      } catch (err) {
        if ((err as { code?: unknown }).code !== 404) throw err;
        await this.api.createNamespacedLease({
          namespace,
          body: { metadata: { name, namespace }, spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 } },
        });
        this.observe(identity, now.toISOString(), '');
        return true;
      }
      const holder = lease.spec?.holderIdentity ?? '';
      const renewTime = String(lease.spec?.renewTime ?? '');
      const rv = lease.metadata?.resourceVersion ?? '';
      if (this.observed?.holder !== holder || this.observed.renewTime !== renewTime || this.observed.resourceVersion !== rv) this.observe(holder, renewTime, rv);
      const heldByOther = holder !== '' && holder !== identity;
      if (heldByOther && this.observedAt + this.leaseMs > Date.now()) return false;
      const transitions = (lease.spec?.leaseTransitions ?? 0) + (holder === identity ? 0 : 1);
      const updated = await this.api.replaceNamespacedLease({
        name,
        namespace,
        body: {
          ...lease,
          spec: { ...lease.spec, ...spec, acquireTime: holder === identity && lease.spec?.acquireTime !== undefined ? microTime(new Date(lease.spec.acquireTime)) : microTime(now), leaseTransitions: transitions },
        },
      });
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
    try {
      const lease = await this.api.readNamespacedLease({ name, namespace });
      if (lease.spec?.holderIdentity !== identity) return;
      await this.api.replaceNamespacedLease({ name, namespace, body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1 } } });
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
