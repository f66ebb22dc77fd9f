import { AckPolicy, type ConsumerConfig, type ConsumerInfo, DeliverPolicy, JetStreamApiError, type JetStreamManager } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import { ConfigError } from '../errors.js';
import { ANONYMIZED_SUBJECT, CHANGES_FILTER } from '../events/subjects.js';

export interface DurableConsumerSettings {
  readonly stream: string;
  /** The durable name: the downstream service's name. */
  readonly service: string;
  readonly ackWaitMs: number;
}

/**
 * The server never stops redelivering by itself: the sidecar counts deliveries, so that it
 * can publish a failure receipt before it terminates an event (a server-side max_deliver
 * would drop the event silently, with an advisory nobody reads).
 */
const MAX_DELIVER = -1;

/**
 * Creates the service's durable pull consumer of anonymization events, or brings an existing
 * one's ack wait and delivery limit in line with the configuration. A consumer of that name
 * that is something else (another filter, another ack policy) is an error, never replaced.
 * Uses only what a 2.9 server has (a single `filter_subject`, no metadata).
 */
export function ensureDurableConsumer(jsm: JetStreamManager, s: DurableConsumerSettings): Promise<ConsumerInfo> {
  return ensureConsumer(jsm, s, { name: s.service, filter: ANONYMIZED_SUBJECT, does: 'purges anonymized users' });
}

/** The service's second consumer: rectifications and processing choices (`<service>-changes`). */
export function ensureChangesConsumer(jsm: JetStreamManager, s: DurableConsumerSettings): Promise<ConsumerInfo> {
  return ensureConsumer(jsm, s, { name: changesConsumerName(s.service), filter: CHANGES_FILTER, does: 'applies rectifications and processing choices' });
}

export const changesConsumerName = (service: string): string => `${service}-changes`;

async function ensureConsumer(jsm: JetStreamManager, s: DurableConsumerSettings, k: { name: string; filter: string; does: string }): Promise<ConsumerInfo> {
  const wanted: Partial<ConsumerConfig> = {
    durable_name: k.name,
    description: `lethe sidecar of ${s.service}: ${k.does}`,
    filter_subject: k.filter,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(s.ackWaitMs),
    max_deliver: MAX_DELIVER,
  };
  let existing: ConsumerInfo;
  try {
    existing = await jsm.consumers.info(s.stream, k.name);
  } catch (err) {
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    return jsm.consumers.add(s.stream, wanted);
  }
  const c = existing.config;
  if (c.filter_subject !== k.filter || c.ack_policy !== AckPolicy.Explicit || c.deliver_subject !== undefined) {
    throw new ConfigError(
      `consumer '${k.name}' on stream '${s.stream}' exists but is not a lethe sidecar consumer (a pull consumer of ${k.filter} with explicit acks): choose another service name, or remove that consumer`,
      '--service',
    );
  }
  if (c.ack_wait !== wanted.ack_wait || c.max_deliver !== MAX_DELIVER) {
    return jsm.consumers.update(s.stream, k.name, { ack_wait: wanted.ack_wait, max_deliver: MAX_DELIVER, description: wanted.description });
  }
  return existing;
}
