import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KubeApiServer, requireKubeAssets, startKubeApiServer } from '../support/kube-apiserver.js';
import { CRD_PATH as CRD, type Kubectl, kubectlFor } from '../support/kubectl.js';

/**
 * The PrivacyRequest CRD on a real kube-apiserver: the API server itself validates the spec,
 * keeps it immutable, and kubectl shows the printer columns and the field documentation.
 */

const assets = requireKubeAssets();

describe.runIf(assets !== undefined)('the PrivacyRequest CRD on a real API server', () => {
  let kube: KubeApiServer;
  let kubectl: Kubectl;
  const ns = 'privacy';

  const request = (name: string, spec: string, requestedBy = '  requestedBy: privacy-desk-ticket-1\n') => `apiVersion: privacy.lethe.dev/v1alpha1
kind: PrivacyRequest
metadata: {name: ${name}, namespace: ${ns}}
spec:
${requestedBy}${spec}
`;

  beforeAll(async () => {
    kube = await startKubeApiServer(assets ?? '');
    kubectl = kubectlFor(assets ?? '', kube.kubeconfigPath);
    expect((await kubectl(['apply', '-f', CRD])).code).toBe(0);
    expect((await kubectl(['wait', '--for=condition=Established', 'crd/privacyrequests.privacy.lethe.dev', '--timeout=30s'])).code).toBe(0);
    expect((await kubectl(['create', 'namespace', ns])).code).toBe(0);
  });
  afterAll(async () => {
    await kube?.destroy();
  });

  it('accepts the issue example and shows type, subject, phase, due date and age', async () => {
    const created = await kubectl(
      ['apply', '-f', '-'],
      request('forget-user-123', '  type: Forget\n  subjectId: user-id-123\n  reason: GDPR Right to be Forgotten'),
    );
    expect(created).toMatchObject({ code: 0, stdout: 'privacyrequest.privacy.lethe.dev/forget-user-123 created\n' });
    const got = await kubectl(['get', 'preq', '-n', ns]);
    expect(got.stdout.split('\n')[0]?.split(/\s+/)).toEqual(['NAME', 'TYPE', 'SUBJECT', 'PHASE', 'DUE', 'AGE']);
    expect(got.stdout).toMatch(/forget-user-123\s+Forget\s+user-id-123\s+/);
  });

  it.each([
    [
      'an unknown type',
      'bad-type',
      '  type: Delete\n  subjectId: user-id-123',
      'spec.type: Unsupported value: "Delete": supported values: "Export", "Forget", "Restrict", "LiftRestriction"',
    ],
    ['a missing subject', 'no-subject', '  type: Export', 'spec.subjectId: Required value'],
    ['an oversized subject', 'long-subject', `  type: Export\n  subjectId: ${'x'.repeat(257)}`, 'spec.subjectId: Too long: may not be more than 256 bytes'],
    [
      'a subject with spaces',
      'spaced-subject',
      '  type: Export\n  subjectId: "jane doe"',
      'spec.subjectId: Invalid value: "jane doe": spec.subjectId in body should match',
    ],
    [
      'an oversized reason',
      'long-reason',
      `  type: Forget\n  subjectId: u-1\n  reason: ${'r'.repeat(257)}`,
      'spec.reason: Too long: may not be more than 256 bytes',
    ],
    [
      'a Restrict without purposes',
      'restrict-nothing',
      '  type: Restrict\n  subjectId: u-1',
      'spec.purposes: Invalid value: purposes is required for Restrict and LiftRestriction, and only for them',
    ],
    [
      'purposes on a Forget',
      'forget-purposes',
      '  type: Forget\n  subjectId: u-1\n  purposes: [marketing]',
      'purposes is required for Restrict and LiftRestriction, and only for them',
    ],
    ['a basis on an Export', 'export-basis', '  type: Export\n  subjectId: u-1\n  basis: Objection', 'basis is only for Restrict and LiftRestriction'],
    [
      'an unknown basis',
      'odd-basis',
      '  type: Restrict\n  subjectId: u-1\n  purposes: [marketing]\n  basis: Dislike',
      'spec.basis: Unsupported value: "Dislike": supported values: "Restriction", "Objection"',
    ],
    [
      'a purpose that is not a name',
      'odd-purpose',
      '  type: Restrict\n  subjectId: u-1\n  purposes: ["direct marketing"]',
      'spec.purposes[0] in body should match',
    ],
  ])('refuses %s with a clear message', async (_, name, spec, message) => {
    const r = await kubectl(['apply', '-f', '-'], request(name, spec));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(message);
  });

  it.each(readdirSync('examples').filter((f) => f.endsWith('.yaml')))('accepts the README example %s as written', async (file) => {
    const r = await kubectl(['apply', '-n', 'default', '-f', join('examples', file)]);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toMatch(/^privacyrequest\.privacy\.lethe\.dev\/\S+ created\n$/);
  });

  it('requires requestedBy on a new request, naming the field', async () => {
    const r = await kubectl(['apply', '-f', '-'], request('no-requester', '  type: Forget\n  subjectId: u-1', ''));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('spec.requestedBy: Invalid value');
    expect(r.stderr).toContain('requestedBy is required: the id of the person who asked');
    const spaced = await kubectl(['apply', '-f', '-'], request('spaced-requester', '  type: Forget\n  subjectId: u-1', '  requestedBy: "jane doe"\n'));
    expect(spaced.stderr).toContain('spec.requestedBy in body should match');
  });

  it('refuses a spec edited after creation', async () => {
    await kubectl(['apply', '-f', '-'], request('export-once', '  type: Export\n  subjectId: user-id-123'));
    const r = await kubectl(['apply', '-f', '-'], request('export-once', '  type: Export\n  subjectId: someone-else'));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('spec is immutable; delete this PrivacyRequest and create a new one');
    const unchanged = await kubectl(['get', 'preq', 'export-once', '-n', ns, '-o', 'jsonpath={.spec.subjectId}']);
    expect(unchanged.stdout).toBe('user-id-123');
  });

  it('keeps status behind its own subresource', async () => {
    // A plain update may not set status; the operator writes it through /status.
    const path = `/apis/privacy.lethe.dev/v1alpha1/namespaces/${ns}/privacyrequests/forget-user-123`;
    const current = JSON.parse((await kube.request('GET', path)).body) as Record<string, unknown>;
    const put = await kube.request('PUT', path, { body: { ...current, status: { phase: 'Succeeded' } } });
    expect(put.status).toBe(200);
    expect((JSON.parse(put.body) as { status?: unknown }).status).toBeUndefined();
    const viaStatus = await kube.request('PUT', `${path}/status`, { body: { ...(JSON.parse(put.body) as object), status: { phase: 'Running' } } });
    expect(viaStatus.status).toBe(200);
    expect((JSON.parse(viaStatus.body) as { status: { phase: string } }).status.phase).toBe('Running');
    const badPhase = await kube.request('PUT', `${path}/status`, { body: { ...(JSON.parse(viaStatus.body) as object), status: { phase: 'Done' } } });
    expect(badPhase.status).toBe(422);
  });

  it('documents every spec field for kubectl explain', async () => {
    const r = await kubectl(['explain', 'privacyrequest.spec']);
    expect(r.code).toBe(0);
    for (const field of ['type\t<string> -required-', 'subjectId\t<string> -required-', 'reason\t<string>']) expect(r.stdout).toContain(field);
    expect(r.stdout).toContain('Immutable once created');
    expect(r.stdout).toContain('Forget anonymizes the subject');
    expect(r.stdout).toContain('printable ASCII');
    expect(r.stdout).toContain('recorded in the ledger and the audit log');
  });
});
