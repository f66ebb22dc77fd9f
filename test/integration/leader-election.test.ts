import { CoordinationV1Api, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LeaderElector } from '../../src/operator/leader-election.js';
import { silentLogger } from '../support/engine-fixture.js';
import { type KubeApiServer, requireKubeAssets, startKubeApiServer } from '../support/kube-apiserver.js';

/** Two replicas campaigning for one Lease on a real API server: one leads, the other takes over. */

const assets = requireKubeAssets();
const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.runIf(assets !== undefined)('Lease-based leader election on a real API server', () => {
  let kube: KubeApiServer;
  let api: CoordinationV1Api;

  beforeAll(async () => {
    kube = await startKubeApiServer(assets ?? '');
    const kc = new KubeConfig();
    kc.loadFromFile(kube.kubeconfigPath);
    api = kc.makeApiClient(CoordinationV1Api);
  });
  afterAll(async () => {
    await kube?.destroy();
  });

  const candidate = (name: string, identity: string, releaseOnStop: boolean) => {
    const elector = new LeaderElector(api, { namespace: 'default', name, identity, leaseDurationMs: 2_000, renewDeadlineMs: 1_500, retryPeriodMs: 200, releaseOnStop, logger: silentLogger });
    const stop = new AbortController();
    let leadingNow = false;
    let terms = 0;
    const done = elector.run(stop.signal, async (leadership) => {
      leadingNow = true;
      terms++;
      await new Promise<void>((r) => leadership.addEventListener('abort', () => r(), { once: true }));
      leadingNow = false;
    });
    return { elector, stop, done, leading: () => leadingNow, terms: () => terms };
  };

  const until = async (cond: () => boolean, ms: number) => {
    const deadline = Date.now() + ms;
    while (!cond() && Date.now() < deadline) await tick(25);
    return cond();
  };

  it('lets exactly one of two replicas lead, and the other take over when the leader dies', async () => {
    const a = candidate('lethe-operator-crash', 'replica-a', false);
    expect(await until(() => a.leading(), 5_000)).toBe(true);
    const b = candidate('lethe-operator-crash', 'replica-b', false);
    for (let i = 0; i < 40; i++) {
      expect([a.leading(), b.leading()].filter(Boolean)).toHaveLength(1);
      await tick(50);
    }
    expect(b.leading()).toBe(false);

    // The leader dies without releasing the lease: the other waits for it to expire.
    const died = Date.now();
    a.stop.abort();
    await a.done;
    expect(await until(() => b.leading(), 6_000)).toBe(true);
    expect(Date.now() - died).toBeGreaterThanOrEqual(1_500);
    const lease = await api.readNamespacedLease({ name: 'lethe-operator-crash', namespace: 'default' });
    expect(lease.spec?.holderIdentity).toBe('replica-b');
    expect(lease.spec?.leaseTransitions).toBe(1);
    b.stop.abort();
    await b.done;
  });

  it('hands over at once when the leader stops gracefully', async () => {
    const a = candidate('lethe-operator-graceful', 'replica-a', true);
    expect(await until(() => a.leading(), 5_000)).toBe(true);
    const b = candidate('lethe-operator-graceful', 'replica-b', true);
    await tick(500);
    expect(b.leading()).toBe(false);
    const stopped = Date.now();
    a.stop.abort();
    await a.done;
    expect(await until(() => b.leading(), 6_000)).toBe(true);
    expect(Date.now() - stopped).toBeLessThan(1_500);
    b.stop.abort();
    await b.done;
  });
});
