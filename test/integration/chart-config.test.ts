import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadServerConfig } from '../../src/config/config.js';
import { loadOperatorConfig } from '../../src/config/operator-config.js';
import { loadSidecarConfig } from '../../src/config/sidecar-config.js';
import { loadDataMap } from '../../src/privacy/data-map.js';
import { CHART_DIR, parseManifests, renderChart, requireHelm } from '../support/helm.js';

/**
 * The contract between the chart and the program: the environment and arguments the chart
 * renders for each container, resolved as the kubelet would (Secrets with plausible values),
 * are accepted by the same configuration loaders `lethe serve`, `lethe operator` and
 * `lethe sidecar` run at start-up, and the data map the chart ships passes validation.
 */

const helm = requireHelm();
const ALL_FEATURES = join(process.cwd(), 'test', 'fixtures', 'helm', 'all-features.yaml');
const SECRETS: Record<string, string> = {
  DATABASE_URL: 'postgresql://lethe:secret@postgres.example.internal:5432/identity',
  LETHE_NATS_URL: 'nats://nats.nats.svc:4222',
  LETHE_ARTIFACT_KEY: 'ab'.repeat(32),
  LETHE_HASH_KEY: 'cd'.repeat(32),
};
/** What the kubelet adds to every container. */
const KUBELET = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };

type Doc = Record<string, unknown>;
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: unknown; configMapKeyRef?: { name: string; key: string }; fieldRef?: { fieldPath: string } };
}
interface Container {
  name: string;
  args?: string[];
  env?: EnvVar[];
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}

const containers = (docs: Doc[]) =>
  docs
    .filter((d) => d.kind === 'Deployment')
    .flatMap((d) =>
      ((d.spec as { template: { spec: { containers: Container[] } } }).template.spec.containers ?? []).map((c) => ({ deployment: d, container: c })),
    );

function resolveEnv(docs: Doc[], env: readonly EnvVar[]): Record<string, string> {
  const out: Record<string, string> = { ...KUBELET };
  for (const e of env) {
    if (e.value !== undefined) out[e.name] = e.value;
    else if (e.valueFrom?.configMapKeyRef !== undefined) {
      const { name, key } = e.valueFrom.configMapKeyRef;
      const cm = docs.find((d) => d.kind === 'ConfigMap' && (d.metadata as { name: string }).name === name);
      const value = (cm?.data as Record<string, string> | undefined)?.[key];
      if (value === undefined) throw new Error(`${e.name}: the chart renders no ConfigMap ${name} with key ${key}`);
      out[e.name] = value;
    } else if (e.valueFrom?.secretKeyRef !== undefined) {
      const value = SECRETS[e.name];
      if (value === undefined) throw new Error(`${e.name} comes from a Secret this test has no plausible value for`);
      out[e.name] = value;
    } else if (e.valueFrom?.fieldRef !== undefined) {
      out[e.name] = e.valueFrom.fieldRef.fieldPath === 'metadata.namespace' ? 'lethe' : 'lethe-abc12-xyz';
    } else {
      out[e.name] = '';
    }
  }
  return out;
}

function flagsOf(args: readonly string[]): Record<string, string | boolean> {
  const flags: Record<string, string | boolean> = {};
  for (let i = 1; i < args.length; i++) {
    const arg = args[i] ?? '';
    const name = arg.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const next = args[i + 1];
    if (next === undefined || next.startsWith('--')) flags[name] = true;
    else {
      flags[name] = next;
      i++;
    }
  }
  return flags;
}

describe.runIf(helm !== undefined)("the chart's rendered configuration is what the program accepts", () => {
  const scratch = mkdtempSync(join(tmpdir(), 'lethe-chart-config-'));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it.each([
    ['default values', [] as string[]],
    ['every feature on', [ALL_FEATURES]],
  ])('%s: server and operator start-up configuration loads', async (_, valuesFiles) => {
    const docs = await renderChart({ releaseName: 'lethe', namespace: 'lethe', valuesFiles });
    const found = containers(docs);
    expect(found.map((f) => f.container.args?.[0]).sort()).toEqual(['operator', 'serve']);
    for (const { container } of found) {
      const env = resolveEnv(docs, container.env ?? []);
      const args = container.args ?? [];
      if (args[0] === 'serve') {
        const flags = flagsOf(args);
        const c = loadServerConfig(env, { demo: flags.demo === true });
        expect(c.listen.host).toBe('0.0.0.0');
        expect(c.database.kind).toBe('postgres');
        expect([...c.platformPrincipals]).toContain(`system:serviceaccount:lethe:${operatorServiceAccount(docs)}`);
        expect(c.serviceAccounts?.apiServer).toMatchObject({ source: 'in-cluster', host: '10.96.0.1' });
        // TLS from the mounted Secret (the files themselves are read at start-up), probes on the health-only port.
        for (const file of [c.tls?.certFile, c.tls?.keyFile, ...(valuesFiles.length > 0 ? [c.tls?.clientCaFile] : [])]) {
          expect(
            container.volumeMounts?.some((m) => file?.startsWith(`${m.mountPath}/`)),
            `${file} is on a mounted volume`,
          ).toBe(true);
        }
        expect(c.tls?.reloadIntervalMs).toBe(valuesFiles.length > 0 ? 30_000 : 10_000);
        expect(c.healthListen?.host).toBe('0.0.0.0');
        if (valuesFiles.length > 0) {
          expect(c.events.natsTls).toEqual({
            caFile: '/etc/lethe/nats-tls/ca.crt',
            certFile: '/etc/lethe/nats-tls/tls.crt',
            keyFile: '/etc/lethe/nats-tls/tls.key',
          });
          expect(container.volumeMounts?.some((m) => m.mountPath === '/etc/lethe/nats-tls')).toBe(true);
        }
        // The data map the server is pointed at is the one in the chart's ConfigMap, and it is valid.
        const mount = container.volumeMounts?.find((m) => c.dataMapPath.startsWith(`${m.mountPath}/`));
        expect(mount, `a volume mounted at the directory of ${c.dataMapPath}`).toBeDefined();
        const cm = docs.find((d) => d.kind === 'ConfigMap') as { data: Record<string, string> } | undefined;
        const file = join(scratch, `datamap-${valuesFiles.length}.yaml`);
        writeFileSync(file, cm?.data[c.dataMapPath.slice((mount?.mountPath.length ?? 0) + 1)] ?? '');
        await expect(loadDataMap(file)).resolves.toMatchObject({ subject: expect.anything() });
      } else {
        const c = loadOperatorConfig(env);
        expect(c.kubernetes).toMatchObject({ source: 'in-cluster' });
        expect(c.leaderElection).toMatchObject({ enabled: true, namespace: 'lethe', identity: 'lethe-abc12-xyz' });
        expect(c.healthListen.host).toBe('0.0.0.0');
        // The token file is where the projected ServiceAccount token is mounted.
        expect(c.token.kind).toBe('file');
        // It trusts the server's CA, from a mounted file; with mutual TLS it has a client certificate.
        expect(container.volumeMounts?.some((m) => c.tls?.caFile.startsWith(`${m.mountPath}/`))).toBe(true);
        expect(c.tls?.certFile !== undefined).toBe(valuesFiles.length > 0);
        expect(c.tlsReloadIntervalMs).toBe(valuesFiles.length > 0 ? 30_000 : 10_000);
        const path = c.token.kind === 'file' ? c.token.path : '';
        expect(container.volumeMounts?.some((m) => path.startsWith(`${m.mountPath}/`))).toBe(true);
      }
    }
  });

  it('the sidecar snippet: its arguments and environment load', () => {
    const docs = parseManifests(readFileSync(join(CHART_DIR, 'examples', 'sidecar-snippet.yaml'), 'utf8'));
    const sidecar = containers(docs).find((f) => f.container.args?.[0] === 'sidecar')?.container;
    expect(sidecar).toBeDefined();
    const flags = flagsOf(sidecar?.args ?? []);
    const c = loadSidecarConfig(resolveEnv(docs, sidecar?.env ?? []), {
      service: String(flags.service),
      dataMap: String(flags.dataMap),
      healthListen: String(flags.healthListen),
    });
    expect(c.service).toBe('orders');
    expect(c.healthListen.host).toBe('0.0.0.0');
  });
});

function operatorServiceAccount(docs: Doc[]): string {
  const d = docs.find((x) => x.kind === 'Deployment' && (x.metadata as { name: string }).name.endsWith('operator'));
  return (d?.spec as { template: { spec: { serviceAccountName: string } } }).template.spec.serviceAccountName;
}
