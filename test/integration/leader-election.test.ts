import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

  const FAST = { leaseDurationMs: 2_000, renewDeadlineMs: 1_500, retryPeriodMs: 200 };
  const candidate = (name: string, identity: string, releaseOnStop: boolean, timing = FAST, through = api) => {
    const elector = new LeaderElector(through, { namespace: 'default', name, identity, ...timing, releaseOnStop, logger: silentLogger });
    const stop = new AbortController();
    let leadingNow = false;
    let terms = 0;
    let startedAt = 0;
    let endedAt = 0;
    const done = elector.run(stop.signal, async (leadership) => {
      leadingNow = true;
      startedAt = Date.now();
      terms++;
      await new Promise<void>((r) => leadership.addEventListener('abort', () => r(), { once: true }));
      leadingNow = false;
      endedAt = Date.now();
    });
    return { elector, stop, done, leading: () => leadingNow, terms: () => terms, startedAt: () => startedAt, endedAt: () => endedAt };
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

  it('a leader whose API server stops answering stops leading within the renew deadline, before its lease can expire', async () => {
    // Replica a reaches the API server through a proxy that can stall (connections stay open,
    // nothing answers: a hung connection); replica b reaches it directly.
    const proxy = await stallingProxy(kube.port);
    const dir = mkdtempSync(join(tmpdir(), 'lethe-le-'));
    const kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(kubeconfig, readFileSync(kube.kubeconfigPath, 'utf8').replaceAll(`127.0.0.1:${kube.port}`, `127.0.0.1:${proxy.port}`));
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    const timing = { leaseDurationMs: 4_000, renewDeadlineMs: 2_500, retryPeriodMs: 250 };
    try {
      const a = candidate('lethe-operator-stall', 'replica-a', false, timing, kc.makeApiClient(CoordinationV1Api));
      expect(await until(() => a.leading(), 5_000)).toBe(true);
      const b = candidate('lethe-operator-stall', 'replica-b', false, timing);
      await tick(1_000);
      expect(b.leading()).toBe(false);

      proxy.stall();
      const stalledAt = Date.now();
      expect(await until(() => !a.leading(), timing.renewDeadlineMs + 2_000)).toBe(true);
      const lastRenewal = Date.parse(String((await api.readNamespacedLease({ name: 'lethe-operator-stall', namespace: 'default' })).spec?.renewTime));
      // The deadline counts from the start of the last renewal that went through (its renewTime).
      expect(a.endedAt() - lastRenewal).toBeLessThanOrEqual(timing.renewDeadlineMs + 400);
      expect(a.endedAt() - lastRenewal).toBeLessThan(timing.leaseDurationMs);
      expect(await until(() => b.leading(), timing.leaseDurationMs + 3_000)).toBe(true);
      // Never two leaders: b began only after a had stopped.
      expect(b.startedAt()).toBeGreaterThan(a.endedAt());
      console.log(
        `leader election: API server stalled; the leader stopped ${a.endedAt() - lastRenewal} ms after its last renewal (${a.endedAt() - stalledAt} ms after the stall), the other took over ${b.startedAt() - a.endedAt()} ms later`,
      );
      a.stop.abort();
      b.stop.abort();
      await Promise.all([a.done, b.done]);
    } finally {
      proxy.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A TCP proxy to 127.0.0.1:`port` that, once stalled, keeps every connection open and forwards nothing more. */
async function stallingProxy(port: number): Promise<{ port: number; stall(): void; close(): void }> {
  const sockets = new Set<Socket>();
  let stalled = false;
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.on('error', () => undefined);
    if (stalled) return client.pause();
    const upstream = connect(port, '127.0.0.1');
    sockets.add(upstream);
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    stall() {
      stalled = true;
      for (const s of sockets) {
        s.unpipe();
        s.pause();
      }
    },
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
