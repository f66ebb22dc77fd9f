import type { V1ObjectMeta } from '@kubernetes/client-node';

/** The PrivacyRequest custom resource, as the CRD in deploy/helm/lethe/files defines it. */

export const GROUP = 'privacy.lethe.dev';
export const VERSION = 'v1alpha1';
export const PLURAL = 'privacyrequests';

export type RequestKind = 'Export' | 'Forget' | 'Restrict' | 'LiftRestriction';
export type Phase = 'Pending' | 'Running' | 'WaitingForDownstream' | 'Succeeded' | 'Failed';

interface PrivacyRequestSpec {
  readonly type: RequestKind;
  readonly subjectId: string;
  readonly reason?: string;
  /** Who asked (required on new resources by the CRD); the operator's ServiceAccount carries it out. */
  readonly requestedBy?: string;
  /** Restrict and LiftRestriction: purposes of the server's data map. */
  readonly purposes?: readonly string[];
  /** Restrict and LiftRestriction: Restriction (the default) or Objection. */
  readonly basis?: 'Restriction' | 'Objection';
}

/** Shaped like metav1.Condition. */
export interface Condition {
  readonly type: string;
  readonly status: 'True' | 'False' | 'Unknown';
  readonly reason: string;
  readonly message: string;
  readonly observedGeneration?: number;
  readonly lastTransitionTime: string;
}

export interface DownstreamStatus {
  readonly service: string;
  readonly state: 'Pending' | 'Purged' | 'Failed' | 'Exported' | 'TimedOut' | 'Applied' | 'Skipped';
  readonly purgedAt?: string;
  readonly error?: string;
}

export interface ArtifactStatus {
  readonly sha256: string;
  readonly sizeBytes: number;
  readonly totalRecords: number;
  readonly counts: Readonly<Record<string, number>>;
  readonly createdAt?: string;
  readonly expiresAt?: string;
  readonly state: 'Available' | 'Expired' | 'Erased';
}

export interface PrivacyRequestStatus {
  readonly phase?: Phase;
  readonly observedGeneration?: number;
  readonly requestId?: string;
  readonly receivedAt?: string;
  readonly dueAt?: string;
  readonly startedAt?: string;
  readonly completedAt?: string;
  readonly conditions?: readonly Condition[];
  readonly downstream?: readonly DownstreamStatus[];
  readonly artifact?: ArtifactStatus;
}

export interface PrivacyRequestResource {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: V1ObjectMeta;
  readonly spec: PrivacyRequestSpec;
  readonly status?: PrivacyRequestStatus;
}

/** The work queue's key: `namespace/name`. */
export function keyOf(obj: { metadata?: V1ObjectMeta }): string {
  return `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}

export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}
