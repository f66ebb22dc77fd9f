import { ConfigError } from '../errors.js';

/**
 * Failpoints, after etcd's gofail: named places where a test can make a process crash, to
 * prove what a crash at that exact point leaves behind. Off unless LETHE_FAILPOINTS names
 * them (tests only); the configuration rejects unknown names.
 */

const FAILPOINTS = [
  /** The receipt is published (PubAck received) and the event is not acked yet. */
  'sidecar-before-ack',
  /** Operator: the PrivacyService carried out the forget or export; the status is not written yet. */
  'operator-after-call',
] as const;

export type Failpoint = (typeof FAILPOINTS)[number];

function isFailpoint(name: string): name is Failpoint {
  return (FAILPOINTS as readonly string[]).includes(name);
}

/** Dies on the spot, as a killed pod would: no cleanup, no ack, no drain. */
export function hitFailpoint(active: ReadonlySet<Failpoint>, name: Failpoint): void {
  if (active.has(name)) process.kill(process.pid, 'SIGKILL');
}

/** `LETHE_FAILPOINTS`: a comma-separated list of known names. */
export function parseFailpoints(value: string | undefined): ReadonlySet<Failpoint> {
  const out = new Set<Failpoint>();
  for (const raw of (value ?? '').split(',')) {
    const name = raw.trim();
    if (name === '') continue;
    if (!isFailpoint(name)) throw new ConfigError(`unknown failpoint '${name}' (known: ${FAILPOINTS.join(', ')})`, 'LETHE_FAILPOINTS');
    out.add(name);
  }
  return out;
}
