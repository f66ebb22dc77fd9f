import { Counter, Gauge, Histogram } from 'prom-client';
import type { Phase } from '../operator/privacy-request.js';
import { DURATION_BUCKETS, type Registry, createRegistry } from './registry.js';

export type ReconcileOutcome = 'success' | 'requeue' | 'error' | 'terminal';

const PHASES: readonly Phase[] = ['Pending', 'Running', 'WaitingForDownstream', 'Succeeded', 'Failed'];

/** What the operator's gauges read on scrape. */
export interface OperatorState {
  queueDepth(): number;
  isLeader(): boolean;
  /** The phase of each cached PrivacyRequest (one without a status yet is Pending). */
  phases(): Iterable<Phase>;
}

/** `lethe operator`: reconciles, the work queue, leadership and the requests by phase. */
export class OperatorMetrics {
  readonly registry: Registry = createRegistry();
  private readonly reconciles = new Counter({
    name: 'lethe_operator_reconciles_total',
    help: 'Reconciles by result: success, requeue (success, looked at again later), error (retried with backoff), terminal (not retried)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  private readonly reconcileSeconds = new Histogram({
    name: 'lethe_operator_reconcile_duration_seconds',
    help: 'Duration of one reconcile',
    buckets: [...DURATION_BUCKETS],
    registers: [this.registry],
  });

  constructor(state: OperatorState) {
    for (const result of ['success', 'requeue', 'error', 'terminal'] as const) this.reconciles.inc({ result }, 0);
    new Gauge({
      name: 'lethe_operator_queue_depth',
      help: 'Keys waiting in the work queue (0 on a replica that does not lead)',
      registers: [this.registry],
      collect() {
        this.set(state.queueDepth());
      },
    });
    new Gauge({
      name: 'lethe_operator_leader',
      help: '1 while this replica holds the leader Lease, else 0',
      registers: [this.registry],
      collect() {
        this.set(state.isLeader() ? 1 : 0);
      },
    });
    new Gauge({
      name: 'lethe_operator_privacy_requests',
      help: 'PrivacyRequests in the watch cache, by status phase',
      labelNames: ['phase'] as const,
      registers: [this.registry],
      collect() {
        const counts = new Map<Phase, number>(PHASES.map((p) => [p, 0]));
        for (const phase of state.phases()) counts.set(phase, (counts.get(phase) ?? 0) + 1);
        for (const [phase, n] of counts) this.set({ phase }, n);
      },
    });
  }

  reconciled(result: ReconcileOutcome, seconds: number): void {
    this.reconciles.inc({ result });
    this.reconcileSeconds.observe(seconds);
  }
}
