import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHART_DIR, renderChart, runHelm, templateArgs } from '../support/helm.js';
import { repo, ALL_FEATURES, RELEASE_NS, helm, type Manifest, type Deployment, one, envOf, container } from '../support/chart-manifests.js';

/** The Helm chart: lint, the values schema and the values' own effects. */

describe.runIf(helm !== undefined)('the Helm chart: lint, values and schema', () => {
  let defaults: Manifest[];
  let tmp: string;

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'lethe-helm-'));
    defaults = await renderChart();
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
});
