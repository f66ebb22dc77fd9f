import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { renderChart } from '../support/helm.js';
import {
  repo,
  ALL_FEATURES,
  CRD_FILE,
  SIDECAR_SNIPPET,
  RESTRICTED_CONTAINER,
  helm,
  type Manifest,
  type Meta,
  type Deployment,
  ofKind,
  one,
  envOf,
  container,
} from '../support/chart-manifests.js';

/** The Helm chart's workloads: the server and operator Deployments, their configuration, the sidecar snippet, the CRD. */

describe.runIf(helm !== undefined)('the Helm chart: workloads and the CRD', () => {
  let defaults: Manifest[];
  let all: Manifest[];

  beforeAll(async () => {
    [defaults, all] = await Promise.all([renderChart(), renderChart({ valuesFiles: [ALL_FEATURES] })]);
  });

  it('renders the server and the operator, two replicas each, from one image', () => {
    const server = one<Deployment>(defaults, 'Deployment', 'lethe-server');
    const operator = one<Deployment>(defaults, 'Deployment', 'lethe-operator');
    expect(server.spec.replicas).toBe(2);
    expect(operator.spec.replicas).toBe(2);
    expect(container(server, 'server')).toMatchObject({ image: 'lethe:0.1.0', args: ['serve'] });
    expect(container(operator, 'operator')).toMatchObject({ image: 'lethe:0.1.0', args: ['operator'] });
    expect(server.spec.template.spec.serviceAccountName).toBe('lethe-server');
    expect(operator.spec.template.spec.serviceAccountName).toBe('lethe-operator');
    expect(ofKind<Meta>(defaults, 'ServiceAccount').length).toBe(2);
    const kinds = defaults.map((m) => m.kind).sort();
    expect(kinds).toEqual(
      [
        'ClusterRole',
        'ClusterRole',
        'ClusterRoleBinding',
        'ClusterRoleBinding',
        'ConfigMap',
        'CustomResourceDefinition',
        'Deployment',
        'Deployment',
        'NetworkPolicy',
        'NetworkPolicy',
        'PodDisruptionBudget',
        'PodDisruptionBudget',
        'Role',
        'RoleBinding',
        'Service',
        'Service',
        'ServiceAccount',
        'ServiceAccount',
      ].sort(),
    );
    // No Secret unless asked for (createSecret), no ServiceMonitor unless asked for (it needs the prometheus-operator's CRD).
    expect(kinds).not.toContain('Secret');
    expect(kinds).not.toContain('ServiceMonitor');
  });

  it('mounts the export signing key when one is given, and only then', () => {
    const server = one<Deployment>(all, 'Deployment', 'privacy-server');
    const c = container(server, 'server');
    expect(envOf(c, 'LETHE_EXPORT_SIGNING_KEY_FILE')?.value).toBe('/etc/lethe/export-signing-key/export-signing-key.pem');
    expect(c.volumeMounts).toContainEqual({ name: 'export-signing-key', mountPath: '/etc/lethe/export-signing-key', readOnly: true });
    expect(server.spec.template.spec.volumes).toContainEqual({
      name: 'export-signing-key',
      secret: { secretName: 'platform-export-key', items: [{ key: 'export-signing-key.pem', path: 'export-signing-key.pem' }] },
    });
    expect(envOf(container(one<Deployment>(defaults, 'Deployment', 'lethe-server'), 'server'), 'LETHE_EXPORT_SIGNING_KEY_FILE')).toBeUndefined();
  });

  it('configures the server from Secrets, the ConfigMap and values, and always trusts the operator', () => {
    const c = container(one<Deployment>(defaults, 'Deployment', 'lethe-server'), 'server');
    expect(envOf(c, 'DATABASE_URL')?.valueFrom?.secretKeyRef).toEqual({ name: 'lethe-database', key: 'url' });
    expect(envOf(c, 'LETHE_NATS_URL')?.valueFrom?.secretKeyRef).toEqual({ name: 'lethe-nats', key: 'url' });
    expect(envOf(c, 'LETHE_ARTIFACT_KEY')?.valueFrom?.secretKeyRef).toEqual({ name: 'lethe-artifact-key', key: 'key' });
    expect(envOf(c, 'LETHE_HASH_KEY')).toBeUndefined();
    expect(envOf(c, 'LETHE_DOWNSTREAM_SERVICES')?.valueFrom?.configMapKeyRef).toEqual({ name: 'lethe-config', key: 'downstream-services' });
    expect(envOf(c, 'LETHE_PLATFORM_PRINCIPALS')?.value).toBe('system:serviceaccount:lethe:lethe-operator');
    expect(envOf(c, 'LETHE_LISTEN')?.value).toBe('0.0.0.0:50051');
    expect(envOf(c, 'LETHE_DATA_MAP')?.value).toBe('/etc/lethe/datamap.yaml');
    expect(envOf(c, 'LETHE_SERVICE_ACCOUNT_ISSUER')?.value).toBe('https://kubernetes.default.svc.cluster.local');
    expect(envOf(c, 'LETHE_SERVICE_ACCOUNT_AUDIENCE')?.value).toBe('lethe');
    expect(envOf(c, 'LETHE_ARTIFACT_TTL')?.value).toBe('7d');
    expect(envOf(c, 'LETHE_JWKS_URL')).toBeUndefined();
    // TLS by default: the probes use the plaintext health-only port. Readiness follows the
    // database (the overall status); liveness must not restart pods for its outage.
    for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) expect(probe).toMatchObject({ grpc: { port: 8086 } });
    expect(c.readinessProbe?.grpc).toEqual({ port: 8086 });
    expect(c.livenessProbe?.grpc).toEqual({ port: 8086, service: 'liveness' });
    expect(c.startupProbe?.grpc).toEqual({ port: 8086, service: 'liveness' });
    expect(c.volumeMounts?.map((m) => m.mountPath).sort()).toEqual(['/etc/lethe', '/etc/lethe/tls', '/tmp', '/var/lib/lethe']);

    const cm = one<{ data: Record<string, string> }>(defaults, 'ConfigMap', 'lethe-config');
    expect(cm.data['datamap.yaml']).toBe(readFileSync(join(repo, 'datamaps', 'identity.yaml'), 'utf8'));
    expect(cm.data['downstream-services']).toBe('');

    const allServer = container(one<Deployment>(all, 'Deployment', 'privacy-server'), 'server');
    expect(envOf(allServer, 'DATABASE_URL')?.valueFrom?.secretKeyRef).toEqual({ name: 'privacy-secrets', key: 'databaseUrl' });
    expect(envOf(allServer, 'LETHE_ARTIFACT_KEY')?.valueFrom?.secretKeyRef).toEqual({ name: 'privacy-secrets', key: 'artifactKey' });
    expect(envOf(allServer, 'LETHE_NATS_URL')?.valueFrom?.secretKeyRef).toEqual({ name: 'platform-nats', key: 'nats-url' });
    expect(envOf(allServer, 'LETHE_HASH_KEY')?.valueFrom?.secretKeyRef).toEqual({ name: 'platform-hash-key', key: 'hex' });
    expect(envOf(allServer, 'LETHE_PLATFORM_PRINCIPALS')?.value).toBe(
      'system:serviceaccount:lethe:lethe-privacy-operator,system:serviceaccount:ops:privacy-admin,dpo-user-id',
    );
    expect(envOf(allServer, 'LETHE_JWKS_URL')?.value).toBe('https://sso.example.com/.well-known/jwks.json');
    expect(envOf(allServer, 'LETHE_JWT_ISSUER')?.value).toBe('https://sso.example.com');
    expect(envOf(allServer, 'LETHE_JWT_AUDIENCE')?.value).toBe('lethe');
    expect(envOf(allServer, 'LETHE_SERVICE_ACCOUNT_AUDIENCE')?.value).toBe('lethe-prod');
    expect(allServer.args).toEqual(['serve', '--demo']);
    expect(allServer.image).toBe('registry.example.com/platform/lethe@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef');
    const secret = one<{ stringData: Record<string, string> }>(all, 'Secret', 'privacy-secrets');
    expect(secret.stringData).toEqual({
      databaseUrl: 'postgresql://lethe:secret@postgres.data.svc:5432/identity?sslmode=verify-full&sslrootcert=/etc/lethe/database-tls/ca.crt',
      artifactKey: '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff',
    });
    const allCm = one<{ data: Record<string, string> }>(all, 'ConfigMap', 'privacy-config');
    const fixture = parse(readFileSync(ALL_FEATURES, 'utf8')) as { dataMap: string };
    expect(allCm.data['datamap.yaml']).toBe(fixture.dataMap);
    expect(allCm.data['downstream-services']).toBe('orders,analytics');
  });

  it('gives the operator its server address, a projected token for the server, leader election and the downward API', () => {
    const d = one<Deployment>(defaults, 'Deployment', 'lethe-operator');
    const c = container(d, 'operator');
    expect(envOf(c, 'KUBECONFIG')).toBeUndefined();
    expect(envOf(c, 'LETHE_SERVER')?.value).toBe('lethe-server.lethe.svc:50051');
    expect(envOf(c, 'LETHE_TOKEN_FILE')?.value).toBe('/var/run/secrets/lethe/token');
    expect(envOf(c, 'LETHE_TLS_CA')?.value).toBe('/etc/lethe/tls-ca/ca.crt');
    expect(envOf(c, 'LETHE_TLS_CERT')).toBeUndefined();
    expect(d.spec.template.spec.volumes.find((v) => v.name === 'tls-ca')?.secret).toEqual({
      secretName: 'lethe-tls',
      items: [{ key: 'ca.crt', path: 'ca.crt' }],
    });
    expect(envOf(c, 'LETHE_OPERATOR_NAMESPACES')?.value).toBe('');
    expect(envOf(c, 'LETHE_OPERATOR_CONCURRENCY')?.value).toBe('4');
    expect(envOf(c, 'LETHE_LEADER_ELECTION')?.value).toBe('true');
    expect(envOf(c, 'LETHE_LEADER_ELECTION_NAMESPACE')?.value).toBe('lethe');
    expect(envOf(c, 'LETHE_HEALTH_LISTEN')?.value).toBe('0.0.0.0:8081');
    expect(envOf(c, 'POD_NAME')?.valueFrom?.fieldRef?.fieldPath).toBe('metadata.name');
    expect(envOf(c, 'POD_NAMESPACE')?.valueFrom?.fieldRef?.fieldPath).toBe('metadata.namespace');
    expect(c.livenessProbe).toMatchObject({ httpGet: { path: '/healthz', port: 'health' } });
    expect(c.readinessProbe).toMatchObject({ httpGet: { path: '/readyz', port: 'health' } });
    expect(c.volumeMounts).toContainEqual(expect.objectContaining({ name: 'lethe-token', mountPath: '/var/run/secrets/lethe' }));
    const token = d.spec.template.spec.volumes.find((v) => v.name === 'lethe-token');
    expect(token?.projected?.sources).toEqual([{ serviceAccountToken: { audience: 'lethe', expirationSeconds: 3600, path: 'token' } }]);

    const allOp = container(one<Deployment>(all, 'Deployment', 'privacy-operator'), 'operator');
    expect(envOf(allOp, 'LETHE_SERVER')?.value).toBe('privacy-server.lethe.svc:9090');
    expect(envOf(allOp, 'LETHE_OPERATOR_NAMESPACES')?.value).toBe('team-a,team-b');
    const allToken = one<Deployment>(all, 'Deployment', 'privacy-operator').spec.template.spec.volumes.find((v) => v.name === 'lethe-token');
    expect(allToken?.projected?.sources[0]?.serviceAccountToken?.audience).toBe('lethe-prod');
  });

  it.each([
    ['default', () => defaults],
    ['all-features', () => all],
  ])('runs every container of the %s values under the restricted Pod Security Standard', (_, manifests) => {
    const deployments = ofKind<Deployment>(manifests(), 'Deployment');
    expect(deployments.length).toBe(2);
    for (const d of deployments) {
      const pod = d.spec.template.spec;
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
      for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
        expect(c.securityContext, `${d.metadata.name}/${c.name}`).toEqual(RESTRICTED_CONTAINER);
        expect(c.resources?.limits?.memory, `${d.metadata.name}/${c.name} memory limit`).toBeDefined();
      }
    }
  });

  it('documents a sidecar snippet that runs `lethe sidecar` restricted, with its data map and probes', () => {
    const d = parse(readFileSync(SIDECAR_SNIPPET, 'utf8')) as Deployment;
    const c = container(d, 'lethe-sidecar');
    expect(c.args).toEqual(['sidecar', '--service', 'orders', '--data-map', '/etc/lethe/datamap.yaml', '--health-listen', '0.0.0.0:8081']);
    expect(c.env.map((e) => e.name)).toEqual(['DATABASE_URL', 'LETHE_NATS_URL', 'LETHE_HASH_KEY', 'LETHE_EXPORT_VERIFY_KEY_FILE']);
    expect(c.securityContext).toEqual(RESTRICTED_CONTAINER);
    expect(d.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(c.livenessProbe).toMatchObject({ httpGet: { path: '/healthz' } });
    expect(c.readinessProbe).toMatchObject({ httpGet: { path: '/readyz' } });
    expect(c.volumeMounts).toEqual([
      { name: 'lethe-datamap', mountPath: '/etc/lethe', readOnly: true },
      { name: 'lethe-export-key', mountPath: '/etc/lethe-export-key', readOnly: true },
    ]);
    expect(envOf(c, 'LETHE_EXPORT_VERIFY_KEY_FILE')?.value).toBe('/etc/lethe-export-key/export-signing-key.pub.pem');
  });

  it('renders the CRD from files/ unchanged, kept on uninstall', async () => {
    const file = parse(readFileSync(CRD_FILE, 'utf8')) as Manifest & { metadata: Meta };
    const crd = one<Manifest & { metadata: Meta }>(defaults, 'CustomResourceDefinition', 'privacyrequests.privacy.lethe.dev');
    expect(crd.metadata.annotations).toEqual({ 'helm.sh/resource-policy': 'keep' });
    expect(crd.metadata.labels).toMatchObject({ 'app.kubernetes.io/name': 'lethe', 'app.kubernetes.io/instance': 'lethe' });
    const { labels: _l, annotations: _a, ...rest } = crd.metadata;
    expect({ ...crd, metadata: rest }).toEqual(file);

    const notKept = await renderChart({ set: { 'crds.keep': 'false' } });
    expect(one<{ metadata: Meta }>(notKept, 'CustomResourceDefinition', 'privacyrequests.privacy.lethe.dev').metadata.annotations).toBeUndefined();
    const none = await renderChart({ set: { 'crds.enabled': 'false' } });
    expect(ofKind(none, 'CustomResourceDefinition')).toEqual([]);
  });
});
