import { describe, expect, it } from 'vitest';
import { ArtifactState, ConfirmationState, type PrivacyRequest as LedgerEntry, RequestState, RequestType } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { setCondition } from '../../src/operator/conditions.js';
import type { PrivacyRequestResource } from '../../src/operator/privacy-request.js';
import { ledgerStatus, refusedStatus, runningStatus, transitions } from '../../src/operator/status.js';

const t0 = new Date('2026-11-22T10:00:00.000Z');
const t1 = new Date('2026-11-22T10:05:00.000Z');

const resource = (type: 'Export' | 'Forget' | 'Restrict', status?: PrivacyRequestResource['status']): PrivacyRequestResource => ({
  apiVersion: 'privacy.lethe.dev/v1alpha1',
  kind: 'PrivacyRequest',
  metadata: { name: 'r', namespace: 'ns', uid: 'uid-1', generation: 1 },
  spec: { type, subjectId: 'user-id-123' },
  ...(status === undefined ? {} : { status }),
});

const entry = (over: Partial<LedgerEntry>): LedgerEntry => ({
  id: '5f0c5b7e-52a5-4f3a-9b0e-1a2b3c4d5e6f',
  type: RequestType.REQUEST_TYPE_FORGET,
  subjectId: 'user-id-123',
  requester: 'lethe-operator',
  requestedBy: '',
  scheduledFor: undefined,
  originalDueAt: undefined,
  extensionReason: '',
  reason: 'GDPR',
  state: RequestState.REQUEST_STATE_COMPLETED,
  receivedAt: t0,
  dueAt: new Date('2026-12-22T10:00:00.000Z'),
  completedAt: t0,
  overdue: false,
  error: '',
  rowsAffected: [],
  confirmations: [],
  artifact: undefined,
  fields: [],
  purposes: [],
  basis: 0,
  ...over,
});

describe('setCondition', () => {
  it('moves lastTransitionTime only when the status flips', () => {
    const a = setCondition(undefined, { type: 'Ready', status: 'False', reason: 'Running', message: 'm1' }, t0);
    const b = setCondition(a, { type: 'Ready', status: 'False', reason: 'Waiting', message: 'm2' }, t1);
    expect(b).toEqual([{ type: 'Ready', status: 'False', reason: 'Waiting', message: 'm2', lastTransitionTime: t0.toISOString() }]);
    const c = setCondition(b, { type: 'Ready', status: 'True', reason: 'Done', message: 'm3' }, t1);
    expect(c[0]?.lastTransitionTime).toBe(t1.toISOString());
  });

  it('keeps conditions of other types', () => {
    const a = setCondition(undefined, { type: 'A', status: 'True', reason: 'R', message: '' }, t0);
    expect(setCondition(a, { type: 'B', status: 'False', reason: 'R', message: '' }, t1).map((c) => c.type)).toEqual(['A', 'B']);
  });
});

describe('status derivation', () => {
  it('Running keeps the first startedAt', () => {
    const s = runningStatus(resource('Forget', { startedAt: t0.toISOString() }), t1);
    expect(s).toMatchObject({ phase: 'Running', observedGeneration: 1, startedAt: t0.toISOString() });
    expect(s.conditions?.[0]).toMatchObject({ type: 'Ready', status: 'False', reason: 'Running', observedGeneration: 1 });
  });

  it('a request that finished before any Running write started when the server received it, not when its status was written', () => {
    const s = ledgerStatus(resource('Forget'), entry({ receivedAt: t0, completedAt: new Date(t0.getTime() + 5) }), t1);
    expect(s).toMatchObject({ phase: 'Succeeded', startedAt: t0.toISOString(), completedAt: new Date(t0.getTime() + 5).toISOString() });
  });
  it('a forget waiting for downstream services lists each and says who is pending', () => {
    const s = ledgerStatus(
      resource('Forget'),
      entry({
        state: RequestState.REQUEST_STATE_ANONYMIZED,
        completedAt: undefined,
        confirmations: [
          { service: 'orders', state: ConfirmationState.CONFIRMATION_STATE_PURGED, purgedAt: t1, rowsAffected: [], error: '' },
          { service: 'analytics', state: ConfirmationState.CONFIRMATION_STATE_PENDING, purgedAt: undefined, rowsAffected: [], error: '' },
        ],
      }),
      t1,
    );
    expect(s.phase).toBe('WaitingForDownstream');
    expect(s.completedAt).toBeUndefined();
    expect(s.downstream).toEqual([
      { service: 'orders', state: 'Purged', purgedAt: t1.toISOString() },
      { service: 'analytics', state: 'Pending' },
    ]);
    expect(s.conditions?.find((c) => c.type === 'DownstreamPurged')).toMatchObject({ status: 'False', reason: 'Waiting', message: 'Waiting for: analytics' });
  });

  it('a stored export carries the artifact and says how to fetch it', () => {
    const s = ledgerStatus(
      resource('Export'),
      entry({
        type: RequestType.REQUEST_TYPE_EXPORT,
        artifact: {
          requestId: 'x',
          sha256: 'ab'.repeat(32),
          sizeBytes: 1234,
          counts: [
            { category: 'profile', exported: 1 },
            { category: 'login_events', exported: 50 },
          ],
          totalRecords: 51,
          createdAt: t0,
          expiresAt: new Date('2026-11-29T10:00:00.000Z'),
          state: ArtifactState.ARTIFACT_STATE_AVAILABLE,
        },
      }),
      t1,
    );
    expect(s.phase).toBe('Succeeded');
    expect(s.artifact).toEqual({
      sha256: 'ab'.repeat(32),
      sizeBytes: 1234,
      totalRecords: 51,
      counts: { profile: 1, login_events: 50 },
      createdAt: t0.toISOString(),
      expiresAt: '2026-11-29T10:00:00.000Z',
      state: 'Available',
    });
    expect(s.conditions?.[0]).toMatchObject({
      status: 'True',
      reason: 'ArtifactStored',
      message: 'Fetch the export with: lethe export --request 5f0c5b7e-52a5-4f3a-9b0e-1a2b3c4d5e6f -o export.json',
    });
  });

  it('a stored export without some downstream part says which, in the condition, the downstream list and an Event', () => {
    const artifact = {
      requestId: 'x',
      sha256: 'cd'.repeat(32),
      sizeBytes: 99,
      counts: [{ category: 'profile', exported: 1 }],
      totalRecords: 6,
      createdAt: t0,
      expiresAt: new Date('2026-11-29T10:00:00.000Z'),
      state: ArtifactState.ARTIFACT_STATE_AVAILABLE,
    };
    const s = ledgerStatus(
      resource('Export'),
      entry({
        type: RequestType.REQUEST_TYPE_EXPORT,
        error: 'partial: search timed out (see the confirmations)',
        artifact,
        confirmations: [
          { service: 'orders', state: ConfirmationState.CONFIRMATION_STATE_EXPORTED, purgedAt: t1, rowsAffected: [], error: '' },
          { service: 'search', state: ConfirmationState.CONFIRMATION_STATE_TIMED_OUT, purgedAt: t1, rowsAffected: [], error: 'stopped answering for 30s' },
        ],
      }),
      t1,
    );
    expect(s.phase).toBe('Succeeded');
    expect(s.downstream).toEqual([
      { service: 'orders', state: 'Exported' },
      { service: 'search', state: 'TimedOut', error: 'stopped answering for 30s' },
    ]);
    expect(s.conditions?.[0]).toMatchObject({
      status: 'True',
      reason: 'ArtifactPartial',
      message:
        "Stored without the part of search (see status.downstream and the document's downstream_export); fetch it with: lethe export --request 5f0c5b7e-52a5-4f3a-9b0e-1a2b3c4d5e6f -o export.json",
    });
    expect(transitions(runningStatus(resource('Export'), t0), s, 'Export').filter((e) => e.type === 'Warning')).toEqual([
      { type: 'Warning', reason: 'DownstreamExportIncomplete', message: 'search did not contribute all its data: stopped answering for 30s' },
    ]);
  });

  it('a refusal is Failed with the reason and the message', () => {
    const s = refusedStatus(resource('Forget'), 'PermissionDenied', 'Platform owners cannot be anonymized', t1);
    expect(s).toMatchObject({ phase: 'Failed', completedAt: t1.toISOString() });
    expect(s.conditions?.[0]).toMatchObject({ status: 'False', reason: 'PermissionDenied', message: 'Platform owners cannot be anonymized' });
  });
});

describe('a Restrict request', () => {
  it('waits for the services with DownstreamApplied, then completes; a service that skipped or failed says so', () => {
    const confirmation = (service: string, state: ConfirmationState, error = '') => ({
      service,
      state,
      purgedAt: state === ConfirmationState.CONFIRMATION_STATE_PENDING ? undefined : t1,
      rowsAffected: [],
      error,
    });
    const waiting = ledgerStatus(
      resource('Restrict'),
      entry({
        type: RequestType.REQUEST_TYPE_RESTRICT,
        state: RequestState.REQUEST_STATE_APPLIED,
        completedAt: undefined,
        confirmations: [
          confirmation('orders', ConfirmationState.CONFIRMATION_STATE_APPLIED),
          confirmation('crm', ConfirmationState.CONFIRMATION_STATE_PENDING),
        ],
      }),
      t1,
    );
    expect(waiting.phase).toBe('WaitingForDownstream');
    expect(waiting.downstream).toEqual([
      { service: 'orders', state: 'Applied', purgedAt: t1.toISOString() },
      { service: 'crm', state: 'Pending' },
    ]);
    expect(waiting.conditions?.find((c) => c.type === 'Ready')).toMatchObject({
      reason: 'WaitingForDownstream',
      message: 'Applied in the primary database; 1 of 2 downstream services have not confirmed',
    });
    expect(waiting.conditions?.find((c) => c.type === 'DownstreamApplied')).toMatchObject({ status: 'False', reason: 'Waiting', message: 'Waiting for: crm' });
    expect(transitions(undefined, waiting, 'Restrict').map((e) => [e.reason, e.message])).toEqual([
      ['Applied', `Applied in the primary database (request ${waiting.requestId ?? ''}); waiting for downstream services to confirm`],
      ['DownstreamApplied', 'orders applied the change'],
    ]);

    const done = ledgerStatus(
      resource('Restrict', waiting),
      entry({
        type: RequestType.REQUEST_TYPE_RESTRICT,
        state: RequestState.REQUEST_STATE_COMPLETED,
        confirmations: [
          confirmation('orders', ConfirmationState.CONFIRMATION_STATE_APPLIED),
          confirmation('crm', ConfirmationState.CONFIRMATION_STATE_SKIPPED),
        ],
      }),
      t1,
    );
    expect(done.conditions?.find((c) => c.type === 'Ready')).toMatchObject({
      status: 'True',
      reason: 'Applied',
      message: 'Applied, and 2 downstream services confirmed it',
    });
    expect(transitions(waiting, done, 'Restrict').map((e) => e.reason)).toEqual(['Completed', 'DownstreamSkipped']);

    const failed = ledgerStatus(
      resource('Restrict', waiting),
      entry({
        type: RequestType.REQUEST_TYPE_RESTRICT,
        state: RequestState.REQUEST_STATE_FAILED,
        error: 'crm could not apply the change: SQLSTATE 23505',
        confirmations: [
          confirmation('orders', ConfirmationState.CONFIRMATION_STATE_APPLIED),
          confirmation('crm', ConfirmationState.CONFIRMATION_STATE_FAILED, 'SQLSTATE 23505'),
        ],
      }),
      t1,
    );
    expect(failed.conditions?.find((c) => c.type === 'DownstreamApplied')).toMatchObject({ reason: 'ChangeFailed', message: 'The change failed in: crm' });
    expect(transitions(waiting, failed, 'Restrict')).toEqual([
      { type: 'Warning', reason: 'Failed', message: 'crm could not apply the change: SQLSTATE 23505' },
      { type: 'Warning', reason: 'DownstreamChangeFailed', message: 'crm could not apply the change: SQLSTATE 23505' },
    ]);
  });
});

describe('transitions', () => {
  it('records each change once, as a person would read it', () => {
    const running = runningStatus(resource('Forget'), t0);
    expect(transitions(undefined, running, 'Forget').map((e) => e.reason)).toEqual(['Started']);
    expect(transitions(running, running, 'Forget')).toEqual([]);
    const waiting = ledgerStatus(
      resource('Forget', running),
      entry({
        state: RequestState.REQUEST_STATE_ANONYMIZED,
        confirmations: [{ service: 'orders', state: ConfirmationState.CONFIRMATION_STATE_PENDING, purgedAt: undefined, rowsAffected: [], error: '' }],
      }),
      t1,
    );
    expect(transitions(running, waiting, 'Forget').map((e) => e.reason)).toEqual(['Anonymized']);
    const failedPurge = ledgerStatus(
      resource('Forget', waiting),
      entry({
        state: RequestState.REQUEST_STATE_ANONYMIZED,
        confirmations: [
          { service: 'orders', state: ConfirmationState.CONFIRMATION_STATE_FAILED, purgedAt: undefined, rowsAffected: [], error: 'DatabaseError' },
        ],
      }),
      t1,
    );
    expect(transitions(waiting, failedPurge, 'Forget')).toEqual([
      { type: 'Warning', reason: 'DownstreamPurgeFailed', message: 'orders could not purge: DatabaseError' },
    ]);
    const refused = refusedStatus(resource('Forget', running), 'SubjectNotFound', 'User not found', t1);
    expect(transitions(running, refused, 'Forget')).toEqual([{ type: 'Warning', reason: 'SubjectNotFound', message: 'User not found' }]);
  });
});
