import { describe, expect, it } from 'vitest';
import { startHealthServer } from '../../src/metrics/health-server.js';
import { OperatorMetrics } from '../../src/metrics/operator-metrics.js';
import { sampleWithTimeout } from '../../src/metrics/sample-with-timeout.js';
import { ServerMetrics } from '../../src/metrics/server-metrics.js';
import type { Phase } from '../../src/operator/privacy-request.js';
import { sample, scrape } from '../support/prometheus.js';

describe('sampleWithTimeout', () => {
  it('answers the value read', async () => {
    expect(await sampleWithTimeout(async () => 7, 1_000)()).toBe(7);
  });

  it('answers undefined when the read fails or is late, and reads once at a time', async () => {
    expect(await sampleWithTimeout(() => Promise.reject(new Error('db down')), 1_000)()).toBeUndefined();
    let reads = 0;
    let finish: (n: number) => void = () => undefined;
    const slow = sampleWithTimeout(() => {
      reads++;
      return new Promise<number>((resolve) => {
        finish = resolve;
      });
    }, 20);
    expect(await slow()).toBeUndefined();
    expect(await slow()).toBeUndefined();
    expect(reads).toBe(1);
    finish(3);
    await new Promise((r) => setTimeout(r, 0));
    expect(await Promise.race([slow(), new Promise((r) => setTimeout(() => r('late'), 10))])).toBe('late');
    expect(reads).toBe(2);
  });
});

describe('server metrics', () => {
  it('reads the overdue and due-within-7-days gauges with one query per scrape', async () => {
    const reads: Array<{ now: Date; soon: Date }> = [];
    const metrics = new ServerMetrics(
      async () => 5,
      async (now, soon) => {
        reads.push({ now, soon });
        return { overdue: 2, dueSoon: 3 };
      },
    );
    const body = await metrics.registry.metrics();
    expect(sample(body, 'lethe_privacy_requests_overdue')).toBe(2);
    expect(sample(body, 'lethe_privacy_requests_due_within_7d')).toBe(3);
    expect(sample(body, 'lethe_outbox_pending')).toBe(5);
    expect(reads.map(({ now, soon }) => soon.getTime() - now.getTime())).toEqual([7 * 86_400_000]);
    await metrics.registry.metrics();
    expect(reads).toHaveLength(2);
  });
});

describe('health server with a registry', () => {
  it('serves /metrics next to /healthz and /readyz; without a registry /metrics is 404', async () => {
    let leader = false;
    const phases: Phase[] = ['Pending', 'Succeeded', 'Succeeded', 'Failed'];
    const metrics = new OperatorMetrics({ queueDepth: () => 2, isLeader: () => leader, phases: () => phases });
    metrics.reconciled('requeue', 0.01);
    metrics.reconciled('terminal', 0.2);
    const withMetrics = await startHealthServer({ host: '127.0.0.1', port: 0 }, () => true, { metrics: metrics.registry });
    const without = await startHealthServer({ host: '127.0.0.1', port: 0 }, () => true);
    try {
      let { body } = await scrape(withMetrics.address.port);
      expect(sample(body, 'lethe_operator_queue_depth')).toBe(2);
      expect(sample(body, 'lethe_operator_leader')).toBe(0);
      expect(sample(body, 'lethe_operator_privacy_requests', { phase: 'Succeeded' })).toBe(2);
      expect(sample(body, 'lethe_operator_privacy_requests', { phase: 'Running' })).toBe(0);
      expect(sample(body, 'lethe_operator_reconciles_total', { result: 'success' })).toBe(0);
      expect(sample(body, 'lethe_operator_reconciles_total', { result: 'terminal' })).toBe(1);
      expect(sample(body, 'lethe_operator_reconcile_duration_seconds_count')).toBe(2);
      leader = true;
      phases.push('Running');
      ({ body } = await scrape(withMetrics.address.port));
      expect(sample(body, 'lethe_operator_leader')).toBe(1);
      expect(sample(body, 'lethe_operator_privacy_requests', { phase: 'Running' })).toBe(1);

      expect((await fetch(`http://127.0.0.1:${withMetrics.address.port}/healthz`)).status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${withMetrics.address.port}/metrics`, { method: 'POST' })).status).toBe(405);
      expect((await fetch(`http://127.0.0.1:${without.address.port}/metrics`)).status).toBe(404);
    } finally {
      await withMetrics.close();
      await without.close();
    }
  });
});
