import { describe, expect, it } from 'vitest';
import { TerminalError, WorkQueue, runWorkers } from '../../src/operator/work-queue.js';

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
/** Waits until `done()` holds, for at most 5 s (timing-based tests must not hang or flake). */
async function until(done: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!done() && Date.now() < deadline) await tick(5);
}

describe('WorkQueue', () => {
  it('processes a key added many times while it waits once', async () => {
    const q = new WorkQueue();
    for (let i = 0; i < 5; i++) q.add('ns/a');
    q.add('ns/b');
    expect(q.length).toBe(2);
    expect(await q.get()).toBe('ns/a');
    expect(await q.get()).toBe('ns/b');
  });

  it('never hands one key to two workers; a key added while processed runs again afterwards', async () => {
    const q = new WorkQueue();
    q.add('ns/a');
    const first = await q.get();
    q.add('ns/a');
    expect(q.length).toBe(0);
    let second: string | undefined;
    void q.get().then((k) => (second = k));
    await tick();
    expect(second).toBeUndefined();
    q.done(first ?? '');
    await tick();
    expect(second).toBe('ns/a');
  });

  it('backs off exponentially from 5 ms, capped, and starts again after forget', () => {
    const q = new WorkQueue({ baseMs: 5, maxMs: 1_000_000 });
    const delays = Array.from({ length: 5 }, () => {
      const d = q.addRateLimited('ns/a');
      q.shutDown(); // cancel the timer; only the delay is under test
      return d;
    });
    expect(delays).toEqual([5, 10, 20, 40, 80]);
    const capped = new WorkQueue({ baseMs: 5, maxMs: 1_000_000 });
    let last = 0;
    for (let i = 0; i < 30; i++) last = capped.addRateLimited('k');
    capped.shutDown();
    expect(last).toBe(1_000_000);
    const reset = new WorkQueue();
    reset.addRateLimited('k');
    reset.forget('k');
    expect(reset.addRateLimited('k')).toBe(5);
    reset.shutDown();
  });

  it('releases waiting workers with undefined on shutdown', async () => {
    const q = new WorkQueue();
    const waiting = q.get();
    q.shutDown();
    expect(await waiting).toBeUndefined();
    q.add('late');
    expect(await q.get()).toBeUndefined();
  });
});

describe('runWorkers', () => {
  it('bounds concurrency and never runs one key twice at once', async () => {
    const q = new WorkQueue();
    let running = 0;
    let peak = 0;
    const active = new Set<string>();
    let overlap = false;
    const seen: string[] = [];
    const workers = runWorkers(
      q,
      async (key) => {
        if (active.has(key)) overlap = true;
        active.add(key);
        running++;
        peak = Math.max(peak, running);
        await tick(5);
        running--;
        active.delete(key);
        seen.push(key);
      },
      3,
      () => undefined,
    );
    for (let i = 0; i < 20; i++) q.add(`ns/k${i % 8}`);
    for (let i = 0; i < 8; i++) q.add(`ns/k${i}`);
    await until(() => new Set(seen).size === 8 && running === 0 && q.length === 0);
    q.shutDown();
    await workers;
    expect(peak).toBe(3);
    expect(overlap).toBe(false);
    expect(new Set(seen)).toEqual(new Set(Array.from({ length: 8 }, (_, i) => `ns/k${i}`)));
  });

  it('retries a failing key with backoff until it succeeds, and never retries a terminal failure', async () => {
    const q = new WorkQueue({ baseMs: 5 });
    const attempts = new Map<string, number>();
    const errors: Array<[string, number | undefined]> = [];
    const workers = runWorkers(
      q,
      async (key) => {
        const n = (attempts.get(key) ?? 0) + 1;
        attempts.set(key, n);
        if (key === 'ns/flaky' && n < 4) throw new Error('transient');
        if (key === 'ns/refused') throw new TerminalError('refused by policy');
      },
      2,
      (key, _err, retryInMs) => errors.push([key, retryInMs]),
    );
    q.add('ns/flaky');
    q.add('ns/refused');
    await until(() => attempts.get('ns/flaky') === 4);
    await tick(20);
    q.shutDown();
    await workers;
    expect(attempts.get('ns/flaky')).toBe(4);
    expect(attempts.get('ns/refused')).toBe(1);
    expect(errors).toEqual(
      expect.arrayContaining([
        ['ns/flaky', 5],
        ['ns/flaky', 10],
        ['ns/flaky', 20],
        ['ns/refused', undefined],
      ]),
    );
    expect(errors).toHaveLength(4);
  });

  it('requeues after requeueAfterMs when the reconciler asks', async () => {
    const q = new WorkQueue();
    let calls = 0;
    const workers = runWorkers(
      q,
      async () => {
        calls++;
        return calls < 3 ? { requeueAfterMs: 10 } : undefined;
      },
      1,
      () => undefined,
    );
    q.add('ns/poll');
    await until(() => calls >= 3);
    await tick(30);
    q.shutDown();
    await workers;
    expect(calls).toBe(3);
  });
});
