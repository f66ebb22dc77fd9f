import { exponentialDelay } from '../runtime/backoff.js';

/** The sidecar's delivery policy: when a failed event is delivered again, and when it is given up. */

/** The longest a failed event waits before its next delivery. */
export const MAX_RETRY_DELAY_MS = 60_000;

/**
 * The delay before the next delivery of an event whose handling failed on delivery number
 * `deliveries` (1 for the first): base · 2^(deliveries − 1), capped at one minute.
 */
export function retryDelayMs(deliveries: number, baseMs: number, capMs: number = MAX_RETRY_DELAY_MS): number {
  return exponentialDelay(deliveries - 1, baseMs, capMs);
}

export type FailureDecision =
  | { readonly kind: 'retry'; readonly delayMs: number }
  /** The last allowed delivery failed: publish a failure receipt and terminate the event. */
  | { readonly kind: 'give-up' };

/** What to do with an event whose purge or receipt failed on its `deliveries`-th delivery. */
export function decideOnFailure(deliveries: number, maxDeliveries: number, retryBaseMs: number): FailureDecision {
  return deliveries < maxDeliveries ? { kind: 'retry', delayMs: retryDelayMs(deliveries, retryBaseMs) } : { kind: 'give-up' };
}
