import { beforeAll, describe, expect, it } from 'vitest';
import { renderChart } from '../support/helm.js';
import { ALL_FEATURES, helm, type Manifest, type Meta, type Container, type Deployment, ofKind, one, envOf, container } from '../support/chart-manifests.js';

/** The Helm chart with TLS: defaults, cert-manager, mutual TLS, and plaintext when turned off. */

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
