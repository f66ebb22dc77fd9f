import { beforeAll, describe, expect, it } from 'vitest';
import { renderChart } from '../support/helm.js';
import {
  ALL_FEATURES,
  helm,
  type Manifest,
  type Meta,
  type Container,
  type Deployment,
  meta,
  ofKind,
  one,
  envOf,
  container,
  type Service,
} from '../support/chart-manifests.js';

/** The Helm chart's Prometheus metrics: ports, Services, ServiceMonitors and NetworkPolicy rules. */

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
