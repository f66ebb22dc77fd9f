import { describe, expect, it } from 'vitest';
import { Lifecycle } from '../../src/runtime/lifecycle.js';
import { capturingLogger } from '../support/logs.js';

describe('Lifecycle', () => {
  const part = (name: string, log: string[], opts: { failStart?: boolean; failStop?: boolean } = {}) => ({
    start() {
      if (opts.failStart === true) throw new Error(`${name} cannot start`);
      log.push(`start ${name}`);
    },
    stop() {
      log.push(`stop ${name}`);
      return opts.failStop === true ? Promise.reject(new Error(`${name} cannot stop`)) : Promise.resolve();
    },
  });

  it('stops the parts in reverse order of start, each once', async () => {
    const log: string[] = [];
    const life = new Lifecycle(capturingLogger().logger);
    await life.start('a', part('a', log));
    const pool = await life.open(
      'pool',
      () => Promise.resolve({ id: 7 }),
      (p) => void log.push(`close pool ${p.id}`),
    );
    life.defer('lock', () => void log.push('unlock'));
    await life.start('b', part('b', log));
    expect(pool).toEqual({ id: 7 });
    await Promise.all([life.stop(), life.stop()]);
    await life.stop();
    expect(log).toEqual(['start a', 'start b', 'stop b', 'unlock', 'close pool 7', 'stop a']);
  });

  it('stops what a failed start-up had started, and rethrows its error', async () => {
    const log: string[] = [];
    const life = new Lifecycle(capturingLogger().logger);
    await expect(
      life.build(async (l) => {
        await l.start('a', part('a', log));
        await l.start('b', part('b', log));
        await l.start('c', part('c', log, { failStart: true }));
        return 'never';
      }),
    ).rejects.toThrow('c cannot start');
    expect(log).toEqual(['start a', 'start b', 'stop b', 'stop a']);
  });

  it('runs every stop even when one fails, then rejects with the first failure, naming the part in the log', async () => {
    const log: string[] = [];
    const { logger, lines } = capturingLogger();
    const life = new Lifecycle(logger);
    await life.start('a', part('a', log, { failStop: true }));
    await life.start('b', part('b', log, { failStop: true }));
    await life.start('c', part('c', log));
    await expect(life.stop()).rejects.toThrow('b cannot stop');
    expect(log).toEqual(['start a', 'start b', 'start c', 'stop c', 'stop b', 'stop a']);
    expect(lines().map((l) => [l.part, l.msg])).toEqual([
      ['b', 'stopping failed'],
      ['a', 'stopping failed'],
    ]);
  });
});
