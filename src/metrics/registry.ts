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

export type { Registry } from 'prom-client';
