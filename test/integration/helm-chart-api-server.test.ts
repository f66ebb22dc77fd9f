import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHART_DIR, parseManifests, renderChart, runCommand, runHelm, templateArgs } from '../support/helm.js';
import { type KubeApiServer, startKubeApiServer } from '../support/kube-apiserver.js';
import { ALL_FEATURES, SIDECAR_SNIPPET, SERVICE_MONITOR_CRD, CERTIFICATE_CRD, RELEASE_NS, helm, assets, type Meta } from '../support/chart-manifests.js';

/** Every manifest the chart renders, accepted by a real kube-apiserver; a real helm install. */

describe.runIf(helm !== undefined && assets !== undefined)('every manifest the chart renders, on a real API server', () => {
  let kube: KubeApiServer;
  const kubectl = (args: string[], stdin?: string) => runCommand(join(assets ?? '', 'kubectl'), ['--kubeconfig', kube.kubeconfigPath, ...args], stdin);

  beforeAll(async () => {
    kube = await startKubeApiServer(assets ?? '');
    for (const ns of [RELEASE_NS, 'team-a', 'team-b']) expect((await kubectl(['create', 'namespace', ns])).code).toBe(0);
    // The prometheus-operator's ServiceMonitor CRD, as a cluster with kube-prometheus-stack has it.
    expect((await kubectl(['apply', '-f', SERVICE_MONITOR_CRD])).code).toBe(0);
    expect((await kubectl(['wait', '--for=condition=Established', 'crd/servicemonitors.monitoring.coreos.com', '--timeout=30s'])).code).toBe(0);
    // cert-manager's Certificate CRD, as a cluster with cert-manager has it.
    expect((await kubectl(['apply', '-f', CERTIFICATE_CRD])).code).toBe(0);
    expect((await kubectl(['wait', '--for=condition=Established', 'crd/certificates.cert-manager.io', '--timeout=30s'])).code).toBe(0);
  });
  afterAll(async () => {
    await kube?.destroy();
  });

  // First, while the API server is empty: helm itself creates the CRD and owns it.
  it('installs with helm, prints how to apply the first PrivacyRequest, and keeps the CRD and the requests on uninstall', async () => {
    const helmArgs = ['--namespace', RELEASE_NS, '--kubeconfig', kube.kubeconfigPath];
    const installed = await runHelm(['install', 'lethe', CHART_DIR, ...helmArgs]);
    expect(installed.stderr).toBe('');
    expect(installed.code).toBe(0);
    const notes = installed.stdout.slice(installed.stdout.indexOf('NOTES:'));
    expect(notes).toContain(`kubectl apply -n ${RELEASE_NS} -f - <<'YAML'`);
    expect(notes).toContain('kind: PrivacyRequest');
    expect(notes).toContain(`kubectl get preq -n ${RELEASE_NS} --watch`);
    expect(notes).toContain('TLS: the certificate in Secret lethe-tls. Clients trust its CA:');
    expect(notes).not.toContain('WARNING: TLS is off');

    // The request NOTES.txt shows, applied as printed.
    const example = /<<'YAML'\n([\s\S]*?)\n\s*YAML\n/.exec(notes)?.[1];
    expect(example).toBeDefined();
    const created = await kubectl(['apply', '-n', RELEASE_NS, '-f', '-'], (example ?? '').replace(/^ {2}/gm, ''));
    expect(created).toMatchObject({ code: 0, stdout: 'privacyrequest.privacy.lethe.dev/forget-user-123 created\n' });
    expect((await kubectl(['get', 'deployment', '-n', RELEASE_NS, '-o', 'name'])).stdout.split('\n').filter(Boolean).sort()).toEqual([
      'deployment.apps/lethe-operator',
      'deployment.apps/lethe-server',
    ]);

    const uninstalled = await runHelm(['uninstall', 'lethe', ...helmArgs]);
    expect(uninstalled.code).toBe(0);
    expect(uninstalled.stdout).toContain('These resources were kept due to the resource policy:\n[CustomResourceDefinition] privacyrequests.privacy.lethe.dev');
    expect((await kubectl(['get', 'deployment', '-n', RELEASE_NS, '-o', 'name'])).stdout).toBe('');
    const request = await kubectl(['get', 'preq', 'forget-user-123', '-n', RELEASE_NS, '-o', 'jsonpath={.spec.subjectId}']);
    expect(request).toMatchObject({ code: 0, stdout: 'user-id-123' });
  });

  it('warns in NOTES.txt when TLS is turned off', async () => {
    const r = await runHelm([
      'install',
      'lethe-plain',
      CHART_DIR,
      '--namespace',
      RELEASE_NS,
      '--kubeconfig',
      kube.kubeconfigPath,
      '--dry-run=server',
      '--set',
      'tls.enabled=false,crds.enabled=false',
    ]);
    expect(r.code).toBe(0);
    const notes = r.stdout.slice(r.stdout.indexOf('NOTES:'));
    expect(notes).toContain('WARNING: TLS is off (tls.enabled=false): the PrivacyService, its tokens and the personal data it\nexports travel in plaintext.');
    expect(notes).not.toContain('Clients trust its CA');
  });

  it.each([
    ['the default values', []],
    ['every optional feature on', [ALL_FEATURES]],
  ])('accepts %s: the CRD applied for real, the rest with --dry-run=server', async (_, valuesFiles) => {
    const rendered = await runHelm(templateArgs({ valuesFiles }));
    expect(rendered.code).toBe(0);
    const docs = parseManifests(rendered.stdout);
    const crds = docs.filter((d) => d.kind === 'CustomResourceDefinition');
    const rest = docs.filter((d) => d.kind !== 'CustomResourceDefinition');
    expect(crds.length).toBe(1);

    // Server-side apply: the CRD may already be there, created by the helm install above.
    const applied = await kubectl(['apply', '--server-side', '--force-conflicts', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: crds }));
    expect(applied.stderr).toBe('');
    expect(applied.stdout).toBe('customresourcedefinition.apiextensions.k8s.io/privacyrequests.privacy.lethe.dev serverside-applied\n');
    const established = await kubectl(['wait', '--for=condition=Established', 'crd/privacyrequests.privacy.lethe.dev', '--timeout=30s']);
    expect(established.code).toBe(0);
    const kept = await kubectl(['get', 'crd', 'privacyrequests.privacy.lethe.dev', '-o', "jsonpath={.metadata.annotations['helm\\.sh/resource-policy']}"]);
    expect(kept.stdout).toBe('keep');

    const dry = await kubectl(['apply', '--dry-run=server', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: rest }));
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    const accepted = dry.stdout.trim().split('\n');
    expect(accepted.length).toBe(rest.length);
    for (const line of accepted) expect(line).toMatch(/ (created|configured|unchanged) \(server dry run\)$/);
    const certificates = accepted.filter((line) => line.startsWith('certificate.cert-manager.io/'));
    expect(certificates).toEqual(
      valuesFiles.length === 0
        ? []
        : [
            'certificate.cert-manager.io/privacy-server-tls created (server dry run)',
            'certificate.cert-manager.io/privacy-operator-tls created (server dry run)',
          ],
    );
    const monitors = accepted.filter((line) => line.startsWith('servicemonitor.monitoring.coreos.com/'));
    expect(monitors).toEqual(
      valuesFiles.length === 0
        ? []
        : [
            'servicemonitor.monitoring.coreos.com/privacy-server created (server dry run)',
            'servicemonitor.monitoring.coreos.com/privacy-operator created (server dry run)',
          ],
    );
  });

  it('accepts the documented sidecar snippet', async () => {
    const dry = await kubectl(['apply', '--dry-run=server', '-n', RELEASE_NS, '-f', SIDECAR_SNIPPET]);
    expect(dry).toMatchObject({ code: 0, stderr: '', stdout: 'deployment.apps/orders created (server dry run)\n' });
  });

  // Deployments are not checked by Pod Security admission; their pods are, so each pod template
  // goes in as a Pod, into a namespace that enforces the restricted standard.
  it("every pod template (defaults, every feature on, the sidecar snippet) passes the API server's restricted Pod Security admission", async () => {
    const ns = 'restricted';
    expect((await kubectl(['create', 'namespace', ns])).code).toBe(0);
    expect(
      (await kubectl(['label', 'namespace', ns, 'pod-security.kubernetes.io/enforce=restricted', 'pod-security.kubernetes.io/enforce-version=latest'])).code,
    ).toBe(0);
    const deployments = [
      ...(await renderChart({ namespace: ns })),
      ...(await renderChart({ namespace: ns, valuesFiles: [ALL_FEATURES] })),
      ...parseManifests(readFileSync(SIDECAR_SNIPPET, 'utf8')),
    ].filter((m) => m.kind === 'Deployment') as unknown as Array<{ metadata: Meta; spec: { template: { metadata?: unknown; spec: unknown } } }>;
    expect(deployments).toHaveLength(5);
    const pods = deployments.map((d, i) => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: `${d.metadata.name}-${i}`, namespace: ns },
      spec: d.spec.template.spec,
    }));
    const dry = await kubectl(['apply', '--dry-run=server', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: pods }));
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    expect(dry.stdout.trim().split('\n')).toHaveLength(5);
    // The check is real: a pod template without the restricted settings is refused.
    const lax = { ...pods[0], metadata: { name: 'lax', namespace: ns }, spec: { containers: [{ name: 'c', image: 'lethe:0.1.0' }] } };
    const refused = await kubectl(['apply', '--dry-run=server', '-f', '-'], JSON.stringify(lax));
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('violates PodSecurity "restricted:latest"');
  });
});
