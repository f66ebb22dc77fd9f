import { randomBytes } from 'node:crypto';
import type { CoreV1Api } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { errorSummary } from '../errors.js';
import type { PrivacyRequestResource } from './privacy-request.js';

const COMPONENT = 'lethe-operator';

/**
 * Kubernetes Events on PrivacyRequests, for `kubectl describe`. Recording is best effort: an
 * Event that cannot be written is logged and never fails a reconcile.
 */
export class EventRecorder {
  constructor(
    private readonly api: CoreV1Api,
    private readonly instance: string,
    private readonly logger: Logger,
  ) {}

  async record(obj: PrivacyRequestResource, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    const namespace = obj.metadata.namespace ?? 'default';
    const now = new Date();
    try {
      await this.api.createNamespacedEvent({
        namespace,
        body: {
          metadata: { name: `${obj.metadata.name ?? 'privacyrequest'}.${now.getTime().toString(16)}${randomBytes(2).toString('hex')}`, namespace },
          involvedObject: {
            apiVersion: obj.apiVersion,
            kind: obj.kind,
            name: obj.metadata.name,
            namespace,
            uid: obj.metadata.uid,
            resourceVersion: obj.metadata.resourceVersion,
          },
          type,
          reason,
          message,
          count: 1,
          firstTimestamp: now,
          lastTimestamp: now,
          source: { component: COMPONENT },
          reportingComponent: COMPONENT,
          reportingInstance: this.instance,
        },
      });
    } catch (err) {
      this.logger.warn({ err: errorSummary(err), reason, resource: `${namespace}/${obj.metadata.name ?? ''}` }, 'could not record a Kubernetes Event');
    }
  }
}
