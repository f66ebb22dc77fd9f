import { describe, expect, it } from 'vitest';
import { loadOperatorConfig } from '../../src/config/operator-config.js';

const base = { LETHE_TOKEN_FILE: '/var/run/secrets/lethe/token', KUBERNETES_SERVICE_HOST: '10.96.0.1' };

describe('operator configuration', () => {
  it('has sane defaults', () => {
    const c = loadOperatorConfig({ ...base, POD_NAME: 'op-0', POD_NAMESPACE: 'lethe' });
    expect(c).toMatchObject({
      server: '127.0.0.1:50051',
      token: { kind: 'file', path: '/var/run/secrets/lethe/token' },
      kubernetes: { source: 'in-cluster', host: '10.96.0.1', port: 443, neededBy: 'KUBECONFIG' },
      namespaces: [],
      concurrency: 4,
      pollIntervalMs: 10_000,
      callTimeoutMs: 300_000,
      healthListen: { host: '127.0.0.1', port: 8081 },
      leaderElection: {
        enabled: true,
        namespace: 'lethe',
        name: 'lethe-operator',
        identity: 'op-0',
        leaseDurationMs: 15_000,
        renewDeadlineMs: 10_000,
        retryPeriodMs: 2_000,
      },
    });
  });

  it('requires an identity and names the variable', () => {
    expect(() => loadOperatorConfig({ KUBERNETES_SERVICE_HOST: '10.96.0.1' })).toThrow(/^LETHE_TOKEN_FILE: required: how the operator proves its identity/);
    expect(() => loadOperatorConfig({ ...base, LETHE_TOKEN: 'a.b.c' })).toThrow('LETHE_TOKEN_FILE: set either LETHE_TOKEN_FILE or LETHE_TOKEN, not both');
  });

  it.each([
    [{ LETHE_OPERATOR_NAMESPACES: 'ok, Not_A_Namespace' }, "LETHE_OPERATOR_NAMESPACES: 'Not_A_Namespace' is not a namespace name"],
    [{ LETHE_OPERATOR_CONCURRENCY: '0' }, 'LETHE_OPERATOR_CONCURRENCY: must be a whole number from 1 to 64'],
    [{ LETHE_LEADER_ELECTION: 'maybe' }, 'LETHE_LEADER_ELECTION: must be true or false'],
    [{ LETHE_LEADER_ELECTION_LEASE: '5s' }, 'LETHE_LEADER_ELECTION_LEASE: the lease duration must exceed the renew deadline'],
    [{ LETHE_LEADER_ELECTION_LEASE: '10s' }, 'LETHE_LEADER_ELECTION_LEASE: the lease duration must exceed the renew deadline'],
    [{ LETHE_LEADER_ELECTION_RETRY: '9s' }, 'LETHE_LEADER_ELECTION_RENEW_DEADLINE: the renew deadline must exceed 1.2 times the retry period'],
    [{ LETHE_LEADER_ELECTION_RENEW_DEADLINE: '2s' }, 'LETHE_LEADER_ELECTION_RENEW_DEADLINE: the renew deadline must exceed 1.2 times the retry period'],
    [{ LETHE_OPERATOR_POLL_INTERVAL: 'soon' }, "LETHE_OPERATOR_POLL_INTERVAL: 'soon' is not a duration"],
    [{ LETHE_SERVER: 'no-port' }, "LETHE_SERVER: 'no-port' is not HOST:PORT"],
    [{ LETHE_FAILPOINTS: 'nope' }, "LETHE_FAILPOINTS: unknown failpoint 'nope'"],
  ])('refuses %j', (env, message) => {
    expect(() => loadOperatorConfig({ ...base, ...env })).toThrow(message);
  });

  it('outside a pod needs KUBECONFIG', () => {
    expect(() => loadOperatorConfig({ LETHE_TOKEN: 'a.b.c' })).toThrow(
      'KUBECONFIG: the operator watches PrivacyRequests on the Kubernetes API server: run in a pod (in-cluster: KUBERNETES_SERVICE_HOST) or set KUBECONFIG',
    );
    expect(loadOperatorConfig({ LETHE_TOKEN: 'a.b.c', KUBECONFIG: '/home/me/.kube/config' }).kubernetes).toEqual({
      source: 'kubeconfig',
      path: '/home/me/.kube/config',
    });
  });

  it('watches the namespaces listed, once each', () => {
    expect(loadOperatorConfig({ ...base, LETHE_OPERATOR_NAMESPACES: 'a, b,a' }).namespaces).toEqual(['a', 'b']);
  });
});
