import { describe, expect, it } from 'vitest';
import { DatabaseHealth } from '../../src/server/database-health.js';
import { silentLogger } from '../support/engine-fixture.js';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the database health probe', () => {
  it('reports not serving from the first probe without an answer in time, serving from the first answer, and stops', async () => {
    let mode: 'answer' | 'silent' | 'refuse' = 'answer';
    let probes = 0;
    const changes: boolean[] = [];
    const health = new DatabaseHealth(
      async () => {
        probes++;
        if (mode === 'silent') await new Promise(() => undefined);
        if (mode === 'refuse') throw new Error('ECONNREFUSED');
      },
      { intervalMs: 20, timeoutMs: 30, logger: silentLogger, onChange: (serving) => changes.push(serving) },
    );
    health.start();
    await tick(100);
    expect(health.isServing()).toBe(true);
    mode = 'silent';
    await tick(150);
    expect(health.isServing()).toBe(false);
    mode = 'answer';
    await tick(150);
    expect(health.isServing()).toBe(true);
    mode = 'refuse';
    await tick(100);
    expect(health.isServing()).toBe(false);
    expect(changes).toEqual([false, true, false]);
    await health.stop();
    const after = probes;
    await tick(100);
    expect(probes).toBe(after);
  });
});
