import { describe, expect, it } from 'vitest';
import { MAX_RETRY_DELAY_MS, decideOnFailure, retryDelayMs } from '../../src/events/delivery-policy.js';

describe('retryDelayMs', () => {
  it('doubles from the base with each delivery', () => {
    expect([1, 2, 3, 4, 5].map((d) => retryDelayMs(d, 1_000))).toEqual([1_000, 2_000, 4_000, 8_000, 16_000]);
    expect([1, 2, 3].map((d) => retryDelayMs(d, 100))).toEqual([100, 200, 400]);
  });

  it('is capped at one minute, even for absurd delivery counts', () => {
    expect(MAX_RETRY_DELAY_MS).toBe(60_000);
    expect(retryDelayMs(7, 1_000)).toBe(60_000);
    expect(retryDelayMs(6, 1_000)).toBe(32_000);
    expect(retryDelayMs(10_000, 1_000)).toBe(60_000);
    expect(retryDelayMs(3, 50, 150)).toBe(150);
  });

  it('treats a first (or nonsensical zero) delivery as the base', () => {
    expect(retryDelayMs(0, 250)).toBe(250);
    expect(retryDelayMs(1, 250)).toBe(250);
  });
});

describe('decideOnFailure', () => {
  it('retries with backoff before the last allowed delivery, then gives up', () => {
    expect(decideOnFailure(1, 3, 100)).toEqual({ kind: 'retry', delayMs: 100 });
    expect(decideOnFailure(2, 3, 100)).toEqual({ kind: 'retry', delayMs: 200 });
    expect(decideOnFailure(3, 3, 100)).toEqual({ kind: 'give-up' });
    // A delivery past the limit (the limit was lowered, or a failure receipt could not be sent).
    expect(decideOnFailure(9, 3, 100)).toEqual({ kind: 'give-up' });
  });

  it('gives up at once when one delivery is all that is allowed', () => {
    expect(decideOnFailure(1, 1, 100)).toEqual({ kind: 'give-up' });
  });
});
