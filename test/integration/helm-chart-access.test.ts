import { beforeAll, describe, expect, it } from 'vitest';
import { renderChart } from '../support/helm.js';
import {
  ALL_FEATURES,
  helm,
  type Manifest,
  type Deployment,
  type RoleLike,
  type Binding,
  ofKind,
  one,
  OPERATOR_RULES,
  LEASE_RULES,
  SERVER_RULES,
} from '../support/chart-manifests.js';

/** The Helm chart's access rules: the RBAC of the server and the operator, and the NetworkPolicy of the server pods. */

describe.runIf(helm !== undefined)('the Helm chart: RBAC and network policy', () => {
  let defaults: Manifest[];
  let all: Manifest[];

  beforeAll(async () => {
    [defaults, all] = await Promise.all([renderChart(), renderChart({ valuesFiles: [ALL_FEATURES] })]);
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
