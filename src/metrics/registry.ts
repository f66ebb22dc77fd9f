import { Registry, collectDefaultMetrics } from 'prom-client';

/**
 * A registry per component, never prom-client's global one, so that tests can run the server,
 * the operator and a sidecar in one process without their metrics colliding. Labels on every
 * metric are bounded enums (method, code, type, outcome, result, phase): never a subject id,
 * a request id or anything else a person could be found by.
 */
export function createRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** Histogram buckets (seconds) for work that takes milliseconds to tens of seconds. */
export const DURATION_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export type { Registry } from 'prom-client';
