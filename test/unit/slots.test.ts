import { describe, expect, it } from 'vitest';
import { Slots } from '../../src/runtime/slots.js';

describe('Slots', () => {
  it('lets at most `size` holders in, and the rest in arrival order as slots free up', async () => {
    const slots = new Slots(2);
    const order: number[] = [];
    let running = 0;
    let peak = 0;
    const task = async (n: number, ms: number) => {
      await slots.acquire();
      running++;
      peak = Math.max(peak, running);
      order.push(n);
      await new Promise((r) => setTimeout(r, ms));
      running--;
      slots.release();
    };
    await Promise.all([task(1, 30), task(2, 10), task(3, 10), task(4, 10), task(5, 10)]);
    expect(peak).toBe(2);
    expect(order).toEqual([1, 2, 3, 4, 5]);
    expect(slots.inUse).toBe(0);
  });

  it('refuses a size that is not a positive integer', () => {
    expect(() => new Slots(0)).toThrow(RangeError);
    expect(() => new Slots(1.5)).toThrow(RangeError);
  });
});
