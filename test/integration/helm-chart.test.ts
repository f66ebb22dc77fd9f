import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHART_DIR, parseManifests, renderChart, requireHelm, runCommand, runHelm, templateArgs } from '../support/helm.js';
import { type KubeApiServer, requireKubeAssets, startKubeApiServer } from '../support/kube-apiserver.js';

/**
 * The Helm chart deploy/helm/lethe: lint, the values schema, what it renders (security contexts,
 * RBAC, the CRD, Secrets, the data map) and, on a real kube-apiserver, that the API server
 * accepts every manifest it renders, with the default values and with every optional feature on.
 */

const repo = process.cwd();
const ALL_FEATURES = join(repo, 'test', 'fixtures', 'helm', 'all-features.yaml');
const CRD_FILE = join(CHART_DIR, 'files', 'privacyrequests.privacy.lethe.dev.yaml');
const SIDECAR_SNIPPET = join(CHART_DIR, 'examples', 'sidecar-snippet.yaml');
const SERVICE_MONITOR_CRD = join(repo, 'test', 'fixtures', 'helm', 'servicemonitors.monitoring.coreos.com.yaml');
const CERTIFICATE_CRD = join(repo, 'test', 'fixtures', 'helm', 'certificates.cert-manager.io.yaml');
const RELEASE_NS = 'lethe';
const RESTRICTED_CONTAINER = {
  runAsNonRoot: true,
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ['ALL'] },
  seccompProfile: { type: 'RuntimeDefault' },
};

const helm = requireHelm();
const assets = helm === undefined ? undefined : requireKubeAssets();

type Manifest = Record<string, unknown>;
interface Meta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string }; configMapKeyRef?: { name: string; key: string }; fieldRef?: { fieldPath: string } };
}
interface Container {
  name: string;
  image: string;
  args: string[];
  env: EnvVar[];
  securityContext?: Record<string, unknown>;
  readinessProbe?: Record<string, unknown>;
  livenessProbe?: Record<string, unknown>;
  startupProbe?: Record<string, unknown>;
  resources?: { limits?: Record<string, string> };
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}
interface PodSpec {
  serviceAccountName: string;
  automountServiceAccountToken?: boolean;
  securityContext?: Record<string, unknown>;
  containers: Container[];
  initContainers?: Container[];
  volumes: Array<{
    name: string;
    projected?: { sources: Array<{ serviceAccountToken?: Record<string, unknown> }> };
    secret?: { secretName: string; items: Array<{ key: string; path: string }> };
  }>;
}
interface Deployment {
  metadata: Meta;
  spec: { replicas: number; template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec } };
}
interface Rule {
  apiGroups?: string[];
  resources?: string[];
  nonResourceURLs?: string[];
  verbs: string[];
}
interface RoleLike {
  kind: string;
  metadata: Meta;
  rules: Rule[];
}
interface Binding {
  kind: string;
  metadata: Meta;
  roleRef: { kind: string; name: string };
  subjects: Array<{ kind: string; name: string; namespace: string }>;
}

const meta = (m: Manifest): Meta => m.metadata as Meta;
const ofKind = <T>(ms: Manifest[], kind: string): T[] => ms.filter((m) => m.kind === kind) as T[];
function one<T>(ms: Manifest[], kind: string, name: string, namespace?: string): T {
  const found = ms.filter((m) => m.kind === kind && meta(m).name === name && (namespace === undefined || meta(m).namespace === namespace));
  if (found.length !== 1) throw new Error(`expected one ${kind} ${namespace ?? ''}/${name}, found ${found.length}`);
  return found[0] as T;
}
const envOf = (c: Container, name: string): EnvVar | undefined => c.env.find((e) => e.name === name);
const container = (d: Deployment, name: string): Container => {
  const c = d.spec.template.spec.containers.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no container ${name} in ${d.metadata.name}`);
  return c;
};

/** The operator's rules, exactly: the least privilege. */
const OPERATOR_RULES: Rule[] = [
  { apiGroups: ['privacy.lethe.dev'], resources: ['privacyrequests'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['privacy.lethe.dev'], resources: ['privacyrequests/status'], verbs: ['get', 'update', 'patch'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
];
const LEASE_RULES: Rule[] = [{ apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] }];
const SERVER_RULES: Rule[] = [{ nonResourceURLs: ['/openid/v1/jwks', '/.well-known/openid-configuration'], verbs: ['get'] }];

describe.runIf(helm !== undefined)('the Helm chart: lint, schema and rendered manifests', () => {
  let defaults: Manifest[];
  let all: Manifest[];
  let tmp: string;

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'lethe-helm-'));
    [defaults, all] = await Promise.all([renderChart(), renderChart({ valuesFiles: [ALL_FEATURES] })]);
  });
  afterAll(() => {
    rmSync(tmp, { recursive: true, force: true });
  });
  const valuesFile = (name: string, text: string): string => {
    const p = join(tmp, name);
    writeFileSync(p, text);
    return p;
  };

  it('carries the package version as appVersion and ships the default data map unchanged', () => {
    const chart = parse(readFileSync(join(CHART_DIR, 'Chart.yaml'), 'utf8')) as { apiVersion: string; version: string; appVersion: string };
    const pkg = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string };
    expect(chart).toMatchObject({ apiVersion: 'v2', version: '0.1.0', appVersion: pkg.version });
    expect(readFileSync(join(CHART_DIR, 'files', 'identity.yaml'), 'utf8')).toBe(readFileSync(join(repo, 'datamaps', 'identity.yaml'), 'utf8'));
  });

  it.each([
    ['the default values', []],
    ['every optional feature on', ['--values', ALL_FEATURES]],
  ])('passes helm lint --strict with %s', async (_, extra) => {
    const r = await runHelm(['lint', '--strict', CHART_DIR, '--namespace', RELEASE_NS, ...extra]);
    expect(r.stderr + r.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
    expect(r.code).toBe(0);
  });

  it.each([
    ['a misspelt nested key', 'server:\n  replicaCont: 3\n', "at '/server': additional properties 'replicaCont' not allowed"],
    ['a misspelt top-level key', 'databse:\n  existingSecret: pg\n', "at '': additional properties 'databse' not allowed"],
    [
      'a misspelt key in a security context',
      'containerSecurityContext:\n  readOnlyRootFileSystem: true\n',
      "additional properties 'readOnlyRootFileSystem' not allowed",
    ],
    ['a wrong type', 'operator:\n  replicaCount: two\n', "at '/operator/replicaCount'"],
    ['an empty database Secret name', 'database:\n  existingSecret: ""\n', "at '/database/existingSecret'"],
    ['a malformed duration', 'server:\n  artifactTtl: 1week\n', "at '/server/artifactTtl'"],
    [
      'a misspelt ServiceMonitor key',
      'metrics:\n  serviceMonitor:\n    intervall: 30s\n',
      "at '/metrics/serviceMonitor': additional properties 'intervall' not allowed",
    ],
    [
      'a misspelt metrics NetworkPolicy peer',
      'metrics:\n  networkPolicy:\n    from:\n      - namespaceSelectr: {}\n',
      "additional properties 'namespaceSelectr' not allowed",
    ],
    ['a misspelt TLS key', 'tls:\n  certManger:\n    enabled: true\n', "at '/tls': additional properties 'certManger' not allowed"],
    ['an issuer kind that does not exist', 'tls:\n  certManager:\n    issuerRef:\n      kind: Issuerr\n', "at '/tls/certManager/issuerRef/kind'"],
    ['a reload interval in hours', 'tls:\n  reloadInterval: 1h\n', "at '/tls/reloadInterval'"],
  ])('refuses %s, naming it', async (_, text, message) => {
    const r = await runHelm(templateArgs({ valuesFiles: [valuesFile('bad.yaml', text)] }));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("values don't meet the specifications of the schema");
    expect(r.stderr).toContain(message);
  });

  it.each([
    [
      'user-token verification without an issuer',
      { 'server.userTokens.jwksUrl': 'https://sso.example.com/jwks' },
      'server.userTokens.issuer and server.userTokens.audience are required',
    ],
    [
      'two operators without leader election',
      { 'operator.leaderElection': 'false' },
      'operator.leaderElection must stay on with more than one operator replica',
    ],
    [
      'a ServiceMonitor without metrics',
      { 'metrics.enabled': 'false', 'metrics.serviceMonitor.enabled': 'true' },
      'metrics.serviceMonitor.enabled needs metrics.enabled',
    ],
    ['a metrics port that is the gRPC port', { 'metrics.port': '50051' }, 'metrics.port (50051) must differ from server.port and server.service.port'],
    ['TLS without a certificate', { 'tls.existingSecret': '' }, 'TLS is on by default and needs a certificate: set tls.existingSecret'],
    ['cert-manager without an issuer', { 'tls.certManager.enabled': 'true' }, 'tls.certManager.issuerRef.name is required with tls.certManager.enabled'],
    ["mutual TLS without the operator's certificate", { 'tls.mutual.enabled': 'true' }, 'tls.mutual.operatorSecret is required with tls.mutual.enabled'],
    ['mutual TLS without TLS', { 'tls.enabled': 'false', 'tls.mutual.enabled': 'true' }, 'tls.mutual.enabled needs tls.enabled'],
    ['a health port that is the gRPC port', { 'tls.healthPort': '50051' }, 'tls.healthPort (50051) must differ from server.port'],
  ])('refuses %s with a message saying what to set', async (_, set, message) => {
    await expect(renderChart({ set })).rejects.toThrow(message);
  });

  it('refuses a data map that hashes without a shared hash key, and takes it with one', async () => {
    const map = valuesFile(
      'hashing-map.yaml',
      'dataMap: |\n  categories:\n    - name: orders\n      table: orders\n      subject: {column: user_id}\n      forget:\n        columns:\n          customer_name: hash\n',
    );
    await expect(renderChart({ valuesFiles: [map] })).rejects.toThrow('the data map uses the hash action: set hashKey.existingSecret');
    const withKey = await renderChart({ valuesFiles: [map], set: { 'hashKey.existingSecret': 'orders-hash-key' } });
    const c = container(one<Deployment>(withKey, 'Deployment', 'lethe-server'), 'server');
    expect(envOf(c, 'LETHE_HASH_KEY')?.valueFrom?.secretKeyRef).toEqual({ name: 'orders-hash-key', key: 'key' });
  });

  it('closes every object of values.schema.json to unknown keys', () => {
    const schema = JSON.parse(readFileSync(join(CHART_DIR, 'values.schema.json'), 'utf8')) as unknown;
    const open: string[] = [];
    const walk = (node: unknown, path: string) => {
      if (node === null || typeof node !== 'object') return;
      const n = node as Record<string, unknown>;
      if (n.properties !== undefined && n.additionalProperties !== false) open.push(path || '/');
      for (const [k, v] of Object.entries(n.properties ?? {})) walk(v, `${path}/${k}`);
      if (typeof n.items === 'object') walk(n.items, `${path}[]`);
    };
    walk(schema, '');
    expect(open).toEqual([]);
  });

  it('comments every value in values.yaml', () => {
    const lines = readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8').split('\n');
    const uncommented: string[] = [];
    lines.forEach((line, i) => {
      const key = /^\s*([\w./-]+):/.exec(line);
      if (key === null) return;
      const previous = lines
        .slice(0, i)
        .reverse()
        .find((l) => l.trim() !== '');
      if (previous?.trim().startsWith('#') !== true) uncommented.push(`${i + 1}: ${key[1] ?? ''}`);
    });
    expect(uncommented).toEqual([]);
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
    expect(c.env.map((e) => e.name)).toEqual(['DATABASE_URL', 'LETHE_NATS_URL', 'LETHE_HASH_KEY']);
    expect(c.securityContext).toEqual(RESTRICTED_CONTAINER);
    expect(d.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(c.livenessProbe).toMatchObject({ httpGet: { path: '/healthz' } });
    expect(c.readinessProbe).toMatchObject({ httpGet: { path: '/readyz' } });
    expect(c.volumeMounts).toEqual([{ name: 'lethe-datamap', mountPath: '/etc/lethe', readOnly: true }]);
  });

  it('grants the operator exactly its rules, cluster-wide when it watches every namespace', () => {
    const role = one<RoleLike>(defaults, 'ClusterRole', 'lethe-operator');
    expect(role.rules).toEqual(OPERATOR_RULES);
    const binding = one<Binding>(defaults, 'ClusterRoleBinding', 'lethe-operator');
    expect(binding.roleRef).toMatchObject({ kind: 'ClusterRole', name: 'lethe-operator' });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'lethe-operator', namespace: 'lethe' }]);
    const lease = one<RoleLike>(defaults, 'Role', 'lethe-operator-leader-election', 'lethe');
    expect(lease.rules).toEqual(LEASE_RULES);
    expect(one<Binding>(defaults, 'RoleBinding', 'lethe-operator-leader-election', 'lethe').subjects).toEqual([
      { kind: 'ServiceAccount', name: 'lethe-operator', namespace: 'lethe' },
    ]);
  });

  it('grants the operator a Role in each watched namespace, and no cluster-wide rule, when namespaces are listed', () => {
    expect(ofKind<RoleLike>(all, 'ClusterRole').map((r) => r.metadata.name)).toEqual(['privacy-server']);
    for (const ns of ['team-a', 'team-b']) {
      expect(one<RoleLike>(all, 'Role', 'privacy-operator', ns).rules).toEqual(OPERATOR_RULES);
      expect(one<Binding>(all, 'RoleBinding', 'privacy-operator', ns).subjects).toEqual([
        { kind: 'ServiceAccount', name: 'lethe-privacy-operator', namespace: 'lethe' },
      ]);
    }
    expect(one<RoleLike>(all, 'Role', 'privacy-operator-leader-election', 'lethe').rules).toEqual(LEASE_RULES);
    // Every rule the chart grants anyone, in one list: nothing else slipped in.
    const granted = [...ofKind<RoleLike>(all, 'ClusterRole'), ...ofKind<RoleLike>(all, 'Role')].flatMap((r) => r.rules);
    expect(granted).toEqual([...SERVER_RULES, ...OPERATOR_RULES, ...OPERATOR_RULES, ...LEASE_RULES]);
  });

  it('lets the server read only the API server signing keys', () => {
    expect(one<RoleLike>(defaults, 'ClusterRole', 'lethe-server').rules).toEqual(SERVER_RULES);
    const binding = one<Binding>(defaults, 'ClusterRoleBinding', 'lethe-server');
    expect(binding.roleRef).toMatchObject({ kind: 'ClusterRole', name: 'lethe-server' });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'lethe-server', namespace: 'lethe' }]);
    const sa = one<{ automountServiceAccountToken: boolean }>(defaults, 'ServiceAccount', 'lethe-server');
    expect(sa.automountServiceAccountToken).toBe(true);
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

  it('rolls the server pods when the data map or the downstream services change', async () => {
    const checksum = (ms: Manifest[]) => one<Deployment>(ms, 'Deployment', 'lethe-server').spec.template.metadata.annotations?.['checksum/config'];
    const base = checksum(defaults);
    expect(base).toMatch(/^[0-9a-f]{64}$/);
    const [withServices, withMap] = await Promise.all([
      renderChart({ set: { downstreamServices: '{orders}' } }),
      renderChart({ valuesFiles: [valuesFile('map.yaml', 'dataMap: |\n  categories: []\n')] }),
    ]);
    expect(checksum(withServices)).not.toBe(base);
    expect(checksum(withMap)).not.toBe(base);
    expect(checksum(withMap)).not.toBe(checksum(withServices));
  });

  it('lets only the operator and labelled clients reach the gRPC and HTTP ports', () => {
    const np = one<{ spec: Record<string, unknown> }>(defaults, 'NetworkPolicy', 'lethe-server');
    expect(np.spec).toEqual({
      podSelector: { matchLabels: { 'app.kubernetes.io/name': 'lethe', 'app.kubernetes.io/instance': 'lethe', 'app.kubernetes.io/component': 'server' } },
      policyTypes: ['Ingress'],
      ingress: [
        {
          ports: [
            { port: 'grpc', protocol: 'TCP' },
            { port: 'http', protocol: 'TCP' },
          ],
          from: [
            {
              podSelector: {
                matchLabels: { 'app.kubernetes.io/name': 'lethe', 'app.kubernetes.io/instance': 'lethe', 'app.kubernetes.io/component': 'operator' },
              },
            },
            { podSelector: { matchLabels: { 'lethe.dev/client': 'true' } }, namespaceSelector: {} },
          ],
        },
        { ports: [{ port: 'metrics', protocol: 'TCP' }], from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }] },
      ],
    });
    const server = one<Deployment>(defaults, 'Deployment', 'lethe-server');
    const operator = one<Deployment>(defaults, 'Deployment', 'lethe-operator');
    expect(server.spec.template.metadata.labels).toMatchObject({ 'app.kubernetes.io/component': 'server' });
    expect(operator.spec.template.metadata.labels).toMatchObject({ 'app.kubernetes.io/component': 'operator' });
  });
});

describe.runIf(helm !== undefined)('the Helm chart: TLS', () => {
  let defaults: Manifest[];
  let all: Manifest[];
  let off: Manifest[];
  const ports = (d: Deployment) =>
    (container(d, d.metadata.name.endsWith('server') ? 'server' : 'operator') as Container & { ports?: Array<{ name: string; containerPort: number }> }).ports;

  beforeAll(async () => {
    [defaults, all, off] = await Promise.all([renderChart(), renderChart({ valuesFiles: [ALL_FEATURES] }), renderChart({ set: { 'tls.enabled': 'false' } })]);
  });

  it('by default: the server serves TLS from the Secret lethe-tls (mounted whole, so rotations reach it) and answers probes on a plaintext health-only port', () => {
    const d = one<Deployment>(defaults, 'Deployment', 'lethe-server');
    const c = container(d, 'server');
    expect(envOf(c, 'LETHE_TLS_CERT')?.value).toBe('/etc/lethe/tls/tls.crt');
    expect(envOf(c, 'LETHE_TLS_KEY')?.value).toBe('/etc/lethe/tls/tls.key');
    expect(envOf(c, 'LETHE_TLS_CLIENT_CA')).toBeUndefined();
    expect(envOf(c, 'LETHE_TLS_RELOAD_INTERVAL')?.value).toBe('10s');
    expect(envOf(c, 'LETHE_GRPC_HEALTH_LISTEN')?.value).toBe('0.0.0.0:8086');
    expect(c.volumeMounts).toContainEqual({ name: 'tls', mountPath: '/etc/lethe/tls', readOnly: true });
    expect(c.volumeMounts?.some((m) => 'subPath' in m)).toBe(false);
    expect(d.spec.template.spec.volumes.find((v) => v.name === 'tls')?.secret).toEqual({
      secretName: 'lethe-tls',
      items: [
        { key: 'tls.crt', path: 'tls.crt' },
        { key: 'tls.key', path: 'tls.key' },
      ],
    });
    for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) expect(probe).toMatchObject({ grpc: { port: 8086 } });
    expect(ofKind(defaults, 'Certificate')).toEqual([]);
  });

  it('with cert-manager and mutual TLS: Certificates naming the Service, the client CA, and a client certificate for the operator', () => {
    const certs = ofKind<{ metadata: Meta; spec: Record<string, unknown> }>(all, 'Certificate');
    expect(certs.map((x) => x.metadata.name)).toEqual(['privacy-server-tls', 'privacy-operator-tls']);
    expect(certs[0]?.spec).toMatchObject({
      secretName: 'privacy-server-tls',
      duration: '720h',
      renewBefore: '240h',
      usages: ['server auth'],
      dnsNames: ['privacy-server', 'privacy-server.lethe', 'privacy-server.lethe.svc', 'privacy-server.lethe.svc.cluster.local'],
      issuerRef: { name: 'platform-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' },
      privateKey: { rotationPolicy: 'Always' },
    });
    expect(certs[1]?.spec).toMatchObject({ secretName: 'privacy-operator-tls', usages: ['client auth'], issuerRef: { name: 'platform-ca' } });
    const server = one<Deployment>(all, 'Deployment', 'privacy-server');
    const sc = container(server, 'server');
    expect(envOf(sc, 'LETHE_TLS_CLIENT_CA')?.value).toBe('/etc/lethe/tls-client-ca/ca.crt');
    expect(envOf(sc, 'LETHE_TLS_RELOAD_INTERVAL')?.value).toBe('30s');
    expect(server.spec.template.spec.volumes.find((v) => v.name === 'tls')?.secret?.secretName).toBe('privacy-server-tls');
    expect(server.spec.template.spec.volumes.find((v) => v.name === 'tls-client-ca')?.secret).toEqual({
      secretName: 'platform-client-ca',
      items: [{ key: 'ca.crt', path: 'ca.crt' }],
    });
    for (const probe of [sc.startupProbe, sc.readinessProbe, sc.livenessProbe]) expect(probe).toMatchObject({ grpc: { port: 8090 } });
    expect(ports(server)).toContainEqual({ name: 'health', containerPort: 8090, protocol: 'TCP' });
    const operator = one<Deployment>(all, 'Deployment', 'privacy-operator');
    const oc = container(operator, 'operator');
    expect(envOf(oc, 'LETHE_TLS_CA')?.value).toBe('/etc/lethe/tls-ca/ca.crt');
    expect(envOf(oc, 'LETHE_TLS_CERT')?.value).toBe('/etc/lethe/tls-client/tls.crt');
    expect(envOf(oc, 'LETHE_TLS_KEY')?.value).toBe('/etc/lethe/tls-client/tls.key');
    expect(operator.spec.template.spec.volumes.find((v) => v.name === 'tls-ca')?.secret?.secretName).toBe('privacy-server-tls');
    expect(operator.spec.template.spec.volumes.find((v) => v.name === 'tls-client')?.secret?.secretName).toBe('privacy-operator-tls');
  });

  it('mounts the CA Secrets of NATS and the database when named, and points the NATS client at them', () => {
    const server = one<Deployment>(all, 'Deployment', 'privacy-server');
    const c = container(server, 'server');
    expect(envOf(c, 'LETHE_NATS_TLS_CA')?.value).toBe('/etc/lethe/nats-tls/ca.crt');
    expect(envOf(c, 'LETHE_NATS_TLS_CERT')?.value).toBe('/etc/lethe/nats-tls/tls.crt');
    expect(envOf(c, 'LETHE_NATS_TLS_KEY')?.value).toBe('/etc/lethe/nats-tls/tls.key');
    expect(c.volumeMounts).toEqual(
      expect.arrayContaining([
        { name: 'nats-tls', mountPath: '/etc/lethe/nats-tls', readOnly: true },
        { name: 'database-tls', mountPath: '/etc/lethe/database-tls', readOnly: true },
      ]),
    );
    expect(server.spec.template.spec.volumes.find((v) => v.name === 'nats-tls')?.secret).toEqual({ secretName: 'platform-nats-tls' });
    expect(server.spec.template.spec.volumes.find((v) => v.name === 'database-tls')?.secret).toEqual({ secretName: 'platform-db-ca' });
    const d = container(one<Deployment>(defaults, 'Deployment', 'lethe-server'), 'server');
    expect(d.env.filter((e) => e.name.startsWith('LETHE_NATS_TLS'))).toEqual([]);
  });

  it('with tls.enabled=false: plaintext, no TLS files, probes on the gRPC port', () => {
    const c = container(one<Deployment>(off, 'Deployment', 'lethe-server'), 'server');
    expect(c.env.filter((e) => e.name.startsWith('LETHE_TLS') || e.name === 'LETHE_GRPC_HEALTH_LISTEN')).toEqual([]);
    for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) expect(probe).toMatchObject({ grpc: { port: 50051 } });
    expect(c.volumeMounts?.map((m) => m.mountPath)).not.toContain('/etc/lethe/tls');
    const oc = container(one<Deployment>(off, 'Deployment', 'lethe-operator'), 'operator');
    expect(envOf(oc, 'LETHE_TLS_CA')).toBeUndefined();
  });
});

interface ServicePort {
  name: string;
  port: number;
  targetPort: string;
}
interface Service {
  metadata: Meta;
  spec: { selector: Record<string, string>; ports: ServicePort[] };
}

describe.runIf(helm !== undefined)('the Helm chart: Prometheus metrics', () => {
  let defaults: Manifest[];
  let all: Manifest[];
  let off: Manifest[];
  let noPeers: Manifest[];
  const ports = (d: Deployment, name: string) => (container(d, name) as Container & { ports?: Array<{ name: string; containerPort: number }> }).ports;
  const selector = (release: string, component: string) => ({
    'app.kubernetes.io/name': 'lethe',
    'app.kubernetes.io/instance': release,
    'app.kubernetes.io/component': component,
  });

  beforeAll(async () => {
    [defaults, all, off, noPeers] = await Promise.all([
      renderChart(),
      renderChart({ valuesFiles: [ALL_FEATURES] }),
      renderChart({ set: { 'metrics.enabled': 'false' } }),
      renderChart({ set: { 'metrics.networkPolicy.from': 'null' } }),
    ]);
  });

  it('by default: the server serves /metrics on 0.0.0.0:9090, a metrics port on its pods and Service; the operator a metrics Service on its health port', () => {
    const server = one<Deployment>(defaults, 'Deployment', 'lethe-server');
    expect(envOf(container(server, 'server'), 'LETHE_METRICS_LISTEN')?.value).toBe('0.0.0.0:9090');
    expect(ports(server, 'server')).toEqual([
      { name: 'grpc', containerPort: 50051, protocol: 'TCP' },
      { name: 'http', containerPort: 8080, protocol: 'TCP' },
      { name: 'metrics', containerPort: 9090, protocol: 'TCP' },
      { name: 'health', containerPort: 8086, protocol: 'TCP' },
    ]);
    expect(one<Service>(defaults, 'Service', 'lethe-server').spec.ports).toEqual([
      { name: 'grpc', port: 50051, targetPort: 'grpc', protocol: 'TCP', appProtocol: 'grpc' },
      { name: 'http', port: 8080, targetPort: 'http', protocol: 'TCP' },
      { name: 'metrics', port: 9090, targetPort: 'metrics', protocol: 'TCP' },
    ]);
    // The HTTP API on all addresses of the pod, HTTPS with the chart's TLS.
    expect(envOf(container(server, 'server'), 'LETHE_HTTP_LISTEN')?.value).toBe('0.0.0.0:8080');
    const operatorMetrics = one<Service>(defaults, 'Service', 'lethe-operator-metrics');
    expect(operatorMetrics.spec.selector).toEqual(selector('lethe', 'operator'));
    expect(operatorMetrics.spec.ports).toEqual([{ name: 'metrics', port: 8081, targetPort: 'health', protocol: 'TCP' }]);
    expect(ports(one<Deployment>(defaults, 'Deployment', 'lethe-operator'), 'operator')).toContainEqual({
      name: 'health',
      containerPort: 8081,
      protocol: 'TCP',
    });
  });

  it("admits only the metrics peers to the operator's health/metrics port, and nobody when there are none", () => {
    const np = one<{ spec: Record<string, unknown> }>(defaults, 'NetworkPolicy', 'lethe-operator');
    expect(np.spec).toEqual({
      podSelector: { matchLabels: { 'app.kubernetes.io/name': 'lethe', 'app.kubernetes.io/instance': 'lethe', 'app.kubernetes.io/component': 'operator' } },
      policyTypes: ['Ingress'],
      ingress: [
        { ports: [{ port: 'health', protocol: 'TCP' }], from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }] },
      ],
    });
    for (const rendered of [off, noPeers]) expect(one<{ spec: { ingress: unknown[] } }>(rendered, 'NetworkPolicy', 'lethe-operator').spec.ingress).toEqual([]);
  });

  it('with metrics.enabled=false: no listener, no metrics ports, no operator metrics Service, no NetworkPolicy rule', () => {
    const server = one<Deployment>(off, 'Deployment', 'lethe-server');
    expect(envOf(container(server, 'server'), 'LETHE_METRICS_LISTEN')).toBeUndefined();
    expect(ports(server, 'server')?.map((p) => p.name)).toEqual(['grpc', 'http', 'health']);
    expect(one<Service>(off, 'Service', 'lethe-server').spec.ports.map((p) => p.name)).toEqual(['grpc', 'http']);
    expect(off.filter((m) => meta(m).name === 'lethe-operator-metrics')).toEqual([]);
    const np = one<{ spec: { ingress: Array<{ ports: Array<{ port: string }> }> } }>(off, 'NetworkPolicy', 'lethe-server');
    expect(np.spec.ingress.map((r) => r.ports[0]?.port)).toEqual(['grpc']);
  });

  it('never renders a NetworkPolicy rule without peers (an empty `from` would admit everyone)', () => {
    const np = one<{ spec: { ingress: Array<{ ports: Array<{ port: string }> }> } }>(noPeers, 'NetworkPolicy', 'lethe-server');
    expect(np.spec.ingress.map((r) => r.ports[0]?.port)).toEqual(['grpc']);
  });

  it('renders a ServiceMonitor for the server and one for the operator, with the interval, timeout and labels asked for', () => {
    const monitors = ofKind<{ apiVersion: string; metadata: Meta; spec: unknown }>(all, 'ServiceMonitor');
    expect(monitors.map((m) => [m.apiVersion, m.metadata.name, m.metadata.namespace])).toEqual([
      ['monitoring.coreos.com/v1', 'privacy-server', 'lethe'],
      ['monitoring.coreos.com/v1', 'privacy-operator', 'lethe'],
    ]);
    for (const [m, component] of [
      [monitors[0], 'server'],
      [monitors[1], 'operator'],
    ] as const) {
      expect(m?.metadata.labels).toMatchObject({ release: 'kube-prometheus-stack', team: 'platform', 'app.kubernetes.io/component': component });
      expect(m?.spec).toEqual({
        namespaceSelector: { matchNames: ['lethe'] },
        selector: { matchLabels: selector('lethe', component) },
        endpoints: [{ port: 'metrics', path: '/metrics', scheme: 'http', interval: '15s', scrapeTimeout: '10s' }],
      });
    }
    // Each selects exactly one Service of the release, and that Service has the `metrics` port.
    const services = ofKind<Service>(all, 'Service');
    for (const component of ['server', 'operator']) {
      const selected = services.filter((svc) => Object.entries(selector('lethe', component)).every(([k, v]) => svc.metadata.labels?.[k] === v));
      expect(selected.map((svc) => svc.spec.ports.find((p) => p.name === 'metrics')?.port)).toEqual([component === 'server' ? 9464 : 9081]);
    }
    expect(envOf(container(one<Deployment>(all, 'Deployment', 'privacy-server'), 'server'), 'LETHE_METRICS_LISTEN')?.value).toBe('0.0.0.0:9464');
    const np = one<{ spec: { ingress: unknown[] } }>(all, 'NetworkPolicy', 'privacy-server');
    expect(np.spec.ingress[1]).toEqual({
      ports: [{ port: 'metrics', protocol: 'TCP' }],
      from: [
        {
          namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } },
          podSelector: { matchLabels: { 'app.kubernetes.io/name': 'prometheus' } },
        },
        { ipBlock: { cidr: '10.0.0.0/8', except: ['10.0.1.0/24'] } },
      ],
    });
  });
});

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
