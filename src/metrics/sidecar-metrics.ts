import { Counter, Histogram } from 'prom-client';
import { DURATION_BUCKETS, type Registry, createRegistry } from './registry.js';

/**
 * purged: purged and receipted; duplicate: an event already purged (redelivered), receipted
 * again; retried: handed back to JetStream for a later delivery; failed: terminated (a failure
 * receipt on the last allowed delivery, or not a valid anonymization event).
 */
export type SidecarOutcome = 'purged' | 'duplicate' | 'retried' | 'failed';

/** `lethe sidecar`: events handled and how long purges take. */
export class SidecarMetrics {
  readonly registry: Registry = createRegistry();
  private readonly events = new Counter({
    name: 'lethe_sidecar_events_total',
    help: 'Anonymization events handled, by outcome: purged, duplicate, retried, failed',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  private readonly purgeSeconds = new Histogram({
    name: 'lethe_sidecar_purge_duration_seconds',
    help: "Duration of one purge transaction in the service's database (successful or not)",
    buckets: [...DURATION_BUCKETS],
    registers: [this.registry],
  });

  constructor() {
    for (const outcome of ['purged', 'duplicate', 'retried', 'failed'] as const) this.events.inc({ outcome }, 0);
  }

  event(outcome: SidecarOutcome): void {
    this.events.inc({ outcome });
  }

  purgeTook(seconds: number): void {
    this.purgeSeconds.observe(seconds);
  }
}
