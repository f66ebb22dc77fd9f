import { ArtifactState, ConfirmationState, type ExportArtifact, type PrivacyRequest as LedgerEntry, RequestState } from '../gen/lethe/privacy/v1/privacy.js';
import { setCondition } from './conditions.js';
import type { ArtifactStatus, Condition, DownstreamStatus, Phase, PrivacyRequestResource, PrivacyRequestStatus, RequestKind } from './privacy-request.js';

/**
 * Pure status derivation: from the resource's current status and what the PrivacyService says,
 * the status the operator should write. The reconciler only decides when to ask and writes.
 */

export const READY = 'Ready';

/** What the operator is doing while a request of each kind runs. */
const STARTED: Readonly<Record<RequestKind, string>> = {
  Forget: 'Anonymizing the subject',
  Export: 'Exporting the subject to an encrypted artifact',
  Restrict: 'Restricting the processing of the subject’s data',
  LiftRestriction: 'Lifting the restriction of the subject’s data',
};

const isChange = (kind: RequestKind): boolean => kind === 'Restrict' || kind === 'LiftRestriction';
const DOWNSTREAM_PURGED = 'DownstreamPurged';
const DOWNSTREAM_APPLIED = 'DownstreamApplied';

/** What a status change means for a person reading `kubectl describe`. */
export interface Transition {
  readonly type: 'Normal' | 'Warning';
  readonly reason: string;
  readonly message: string;
}

export function runningStatus(obj: PrivacyRequestResource, now: Date): PrivacyRequestStatus {
  const generation = obj.metadata.generation ?? 0;
  const verb = STARTED[obj.spec.type];
  return clean({
    ...obj.status,
    phase: 'Running',
    observedGeneration: generation,
    startedAt: obj.status?.startedAt ?? now.toISOString(),
    conditions: setCondition(
      obj.status?.conditions,
      { type: READY, status: 'False', reason: 'Running', message: `${verb} through the PrivacyService`, observedGeneration: generation },
      now,
    ),
  });
}

/** The request was refused for good (policy, unknown subject, invalid input): Failed, not retried. */
export function refusedStatus(obj: PrivacyRequestResource, reason: string, message: string, now: Date): PrivacyRequestStatus {
  const generation = obj.metadata.generation ?? 0;
  return clean({
    ...obj.status,
    phase: 'Failed',
    observedGeneration: generation,
    startedAt: obj.status?.startedAt ?? now.toISOString(),
    completedAt: now.toISOString(),
    conditions: setCondition(obj.status?.conditions, { type: READY, status: 'False', reason, message, observedGeneration: generation }, now),
  });
}

/** The status mirroring the ledger entry (and, for exports, the stored artifact). */
export function ledgerStatus(obj: PrivacyRequestResource, entry: LedgerEntry, now: Date): PrivacyRequestStatus {
  const generation = obj.metadata.generation ?? 0;
  const downstream = entry.confirmations.map(toDownstream);
  const artifact = entry.artifact === undefined ? undefined : toArtifact(entry.artifact);
  const phase = phaseOf(entry);
  let conditions = obj.status?.conditions;
  const ready = readyCondition(obj, entry, phase, downstream, artifact);
  conditions = setCondition(conditions, { ...ready, observedGeneration: generation }, now);
  if ((obj.spec.type === 'Forget' || isChange(obj.spec.type)) && downstream.length > 0) {
    const change = isChange(obj.spec.type);
    const failed = downstream.filter((d) => d.state === 'Failed').map((d) => d.service);
    const pending = downstream.filter((d) => d.state === 'Pending').map((d) => d.service);
    const purged = failed.length === 0 && pending.length === 0;
    conditions = setCondition(
      conditions,
      {
        type: change ? DOWNSTREAM_APPLIED : DOWNSTREAM_PURGED,
        status: purged ? 'True' : 'False',
        reason: purged ? 'AllConfirmed' : failed.length > 0 ? (change ? 'ChangeFailed' : 'PurgeFailed') : 'Waiting',
        message: purged
          ? `All ${downstream.length} downstream services confirmed ${change ? 'the change' : 'their purge'}`
          : failed.length > 0
            ? `${change ? 'The change' : 'Purge'} failed in: ${failed.join(', ')}`
            : `Waiting for: ${pending.join(', ')}`,
        observedGeneration: generation,
      },
      now,
    );
  }
  return clean({
    ...obj.status,
    phase,
    observedGeneration: generation,
    requestId: entry.id,
    receivedAt: iso(entry.receivedAt),
    dueAt: iso(entry.dueAt),
    // Without a Running write first (a call that answered at once), it started when the server received it.
    startedAt: obj.status?.startedAt ?? iso(entry.receivedAt) ?? now.toISOString(),
    completedAt: phase === 'Succeeded' || phase === 'Failed' ? (iso(entry.completedAt) ?? now.toISOString()) : undefined,
    conditions,
    downstream: downstream.length > 0 ? downstream : undefined,
    artifact,
  });
}

function phaseOf(entry: LedgerEntry): Phase {
  switch (entry.state) {
    case RequestState.REQUEST_STATE_ANONYMIZED:
    case RequestState.REQUEST_STATE_APPLIED:
      return 'WaitingForDownstream';
    case RequestState.REQUEST_STATE_COMPLETED:
      return 'Succeeded';
    case RequestState.REQUEST_STATE_FAILED:
      return 'Failed';
    default:
      return 'Running';
  }
}

function readyCondition(
  obj: PrivacyRequestResource,
  entry: LedgerEntry,
  phase: Phase,
  downstream: readonly DownstreamStatus[],
  artifact: ArtifactStatus | undefined,
): Omit<Condition, 'lastTransitionTime'> {
  switch (phase) {
    case 'Succeeded':
      if (obj.spec.type === 'Export') {
        if (artifact?.state === 'Erased') {
          return {
            type: READY,
            status: 'True',
            reason: 'ArtifactErased',
            message: 'The subject was forgotten: the export artifact was erased with the rest of their data',
          };
        }
        return artifact?.state === 'Expired'
          ? {
              type: READY,
              status: 'True',
              reason: 'ArtifactExpired',
              message: `The export artifact expired at ${artifact.expiresAt ?? 'its expiry'} and was deleted; create a new Export request to export again`,
            }
          : downstream.some((d) => d.state !== 'Exported')
            ? {
                type: READY,
                status: 'True',
                reason: 'ArtifactPartial',
                message: `Stored without the part of ${downstream
                  .filter((d) => d.state !== 'Exported')
                  .map((d) => d.service)
                  .join(', ')} (see status.downstream and the document's downstream_export); fetch it with: lethe export --request ${entry.id} -o export.json`,
              }
            : { type: READY, status: 'True', reason: 'ArtifactStored', message: `Fetch the export with: lethe export --request ${entry.id} -o export.json` };
      }
      if (isChange(obj.spec.type)) {
        return {
          type: READY,
          status: 'True',
          reason: 'Applied',
          message:
            downstream.length > 0
              ? `Applied, and ${downstream.length} downstream services confirmed it`
              : 'Applied; no downstream services are configured to confirm',
        };
      }
      return {
        type: READY,
        status: 'True',
        reason: 'Erased',
        message:
          downstream.length > 0
            ? `Anonymized, and ${downstream.length} downstream services confirmed their purge`
            : 'Anonymized; no downstream services are configured to confirm',
      };
    case 'WaitingForDownstream':
      return {
        type: READY,
        status: 'False',
        reason: 'WaitingForDownstream',
        message: `${isChange(obj.spec.type) ? 'Applied' : 'Anonymized'} in the primary database; ${downstream.filter((d) => d.state === 'Pending').length} of ${downstream.length} downstream services have not confirmed`,
      };
    case 'Failed':
      return {
        type: READY,
        status: 'False',
        reason: 'Failed',
        message: entry.error === '' ? 'The PrivacyService could not carry out the request' : entry.error,
      };
    default:
      return { type: READY, status: 'False', reason: 'Running', message: 'The PrivacyService is carrying out the request' };
  }
}

/** Events for what changed between two statuses, in the order a person would read them. */
export function transitions(before: PrivacyRequestStatus | undefined, after: PrivacyRequestStatus, kind: RequestKind): Transition[] {
  const change = isChange(kind);
  const out: Transition[] = [];
  const ready = after.conditions?.find((c) => c.type === READY);
  if (before?.phase !== after.phase) {
    switch (after.phase) {
      case 'Running':
        out.push({
          type: 'Normal',
          reason: 'Started',
          message: kind === 'Export' ? STARTED.Export : `${STARTED[kind]} through the PrivacyService`,
        });
        break;
      case 'WaitingForDownstream':
        out.push(
          change
            ? {
                type: 'Normal',
                reason: 'Applied',
                message: `Applied in the primary database (request ${after.requestId ?? ''}); waiting for downstream services to confirm`,
              }
            : {
                type: 'Normal',
                reason: 'Anonymized',
                message: `Anonymized in the primary database (request ${after.requestId ?? ''}); waiting for downstream services to confirm their purge`,
              },
        );
        break;
      case 'Succeeded':
        out.push({
          type: 'Normal',
          reason: kind === 'Forget' ? 'Erased' : kind === 'Export' ? 'ArtifactStored' : 'Completed',
          message: ready?.message ?? 'Succeeded',
        });
        break;
      case 'Failed':
        out.push({ type: 'Warning', reason: ready?.reason ?? 'Failed', message: ready?.message ?? 'Failed' });
        break;
      default:
        break;
    }
  }
  for (const d of after.downstream ?? []) {
    const was = before?.downstream?.find((b) => b.service === d.service)?.state;
    if (was === d.state || d.state === 'Pending' || d.state === 'Exported') continue;
    if (d.state === 'Purged') out.push({ type: 'Normal', reason: 'DownstreamPurged', message: `${d.service} confirmed its purge` });
    else if (d.state === 'Applied') out.push({ type: 'Normal', reason: 'DownstreamApplied', message: `${d.service} applied the change` });
    else if (d.state === 'Skipped')
      out.push({ type: 'Normal', reason: 'DownstreamSkipped', message: `${d.service} had nothing to change: it had erased the subject` });
    else if (change)
      out.push({ type: 'Warning', reason: 'DownstreamChangeFailed', message: `${d.service} could not apply the change: ${d.error ?? 'no reason given'}` });
    else if (after.artifact !== undefined)
      out.push({
        type: 'Warning',
        reason: 'DownstreamExportIncomplete',
        message: `${d.service} did not contribute all its data: ${d.error ?? 'no reason given'}`,
      });
    else out.push({ type: 'Warning', reason: 'DownstreamPurgeFailed', message: `${d.service} could not purge: ${d.error ?? 'no reason given'}` });
  }
  if (before?.artifact?.state === 'Available' && after.artifact?.state === 'Expired') {
    out.push({ type: 'Normal', reason: 'ArtifactExpired', message: 'The export artifact expired and was deleted' });
  }
  if (before?.artifact?.state === 'Available' && after.artifact?.state === 'Erased') {
    out.push({ type: 'Normal', reason: 'ArtifactErased', message: 'The subject was forgotten: the export artifact was erased' });
  }
  return out;
}

function toDownstream(c: LedgerEntry['confirmations'][number]): DownstreamStatus {
  switch (c.state) {
    case ConfirmationState.CONFIRMATION_STATE_PURGED:
      return clean({ service: c.service, state: 'Purged', purgedAt: iso(c.purgedAt) });
    case ConfirmationState.CONFIRMATION_STATE_FAILED:
      return clean({ service: c.service, state: 'Failed', error: c.error === '' ? undefined : c.error });
    case ConfirmationState.CONFIRMATION_STATE_EXPORTED:
      return { service: c.service, state: 'Exported' };
    case ConfirmationState.CONFIRMATION_STATE_APPLIED:
      return clean({ service: c.service, state: 'Applied', purgedAt: iso(c.purgedAt) });
    case ConfirmationState.CONFIRMATION_STATE_SKIPPED:
      return clean({ service: c.service, state: 'Skipped', purgedAt: iso(c.purgedAt) });
    case ConfirmationState.CONFIRMATION_STATE_TIMED_OUT:
      return clean({ service: c.service, state: 'TimedOut', error: c.error === '' ? undefined : c.error });
    default:
      return { service: c.service, state: 'Pending' };
  }
}

function toArtifact(a: ExportArtifact): ArtifactStatus {
  return clean({
    sha256: a.sha256,
    sizeBytes: a.sizeBytes,
    totalRecords: a.totalRecords,
    counts: Object.fromEntries(a.counts.map((c) => [c.category, c.exported])),
    createdAt: iso(a.createdAt),
    expiresAt: iso(a.expiresAt),
    state: a.state === ArtifactState.ARTIFACT_STATE_EXPIRED ? 'Expired' : a.state === ArtifactState.ARTIFACT_STATE_ERASED ? 'Erased' : 'Available',
  });
}

const iso = (d: Date | undefined): string | undefined => (d === undefined ? undefined : d.toISOString());

/** Drops undefined members, so a status compares equal to the same status read back from the API server. */
function clean<T extends object>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}
