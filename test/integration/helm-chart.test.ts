import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHART_DIR, renderChart, runHelm, templateArgs } from '../support/helm.js';
import {
  repo,
  ALL_FEATURES,
  CRD_FILE,
  SIDECAR_SNIPPET,
  RELEASE_NS,
  RESTRICTED_CONTAINER,
  helm,
  type Manifest,
  type Meta,
  type Deployment,
  type RoleLike,
  type Binding,
  ofKind,
  one,
  envOf,
  container,
  OPERATOR_RULES,
  LEASE_RULES,
  SERVER_RULES,
} from '../support/chart-manifests.js';

/** The Helm chart: lint, the values schema and what it renders. */

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
      if ((n.properties !== undefined || n.patternProperties !== undefined) && n.additionalProperties !== false) open.push(path || '/');
      for (const [k, v] of Object.entries(n.properties ?? {})) walk(v, `${path}/${k}`);
      for (const [k, v] of Object.entries(n.patternProperties ?? {})) walk(v, `${path}/${k}`);
      if (typeof n.items === 'object') walk(n.items, `${path}[]`);
      for (const k of ['allOf', 'anyOf', 'oneOf']) if (Array.isArray(n[k])) n[k].forEach((v: unknown, i: number) => walk(v, `${path}/${k}[${i}]`));
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
