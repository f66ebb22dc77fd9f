import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningOperator } from '../../src/operator/operator.js';
import { renderChart, requireHelm } from '../support/helm.js';
import { type KubeApiServer, requireKubeAssets, startKubeApiServer } from '../support/kube-apiserver.js';
import { type Kubectl, installCrd, kubectlFor, mustKubectl, privacyRequestYaml } from '../support/kubectl.js';
import { capturingLogger } from '../support/logs.js';
import { privacyRequests, startTestOperator } from '../support/operator-fixture.js';
import { type TestServer, startTestServer } from '../support/server-fixture.js';
import { waitFor } from '../support/streams.js';

/**
 * The operator and the server run as the ServiceAccounts the Helm chart creates, bound to exactly
 * the RBAC the chart renders (read from `helm template`, so chart and test cannot drift apart),
 * and the operator proves its identity to the PrivacyService with its own ServiceAccount token
 * (audience lethe), which the server verifies against the API server's keys.
 */

const assets = requireKubeAssets();
const helm = requireHelm();
const NS = 'lethe';
const OPERATOR_PRINCIPAL = `system:serviceaccount:${NS}:lethe-operator`;

describe.runIf(assets !== undefined && helm !== undefined)("the operator under exactly the chart's RBAC", () => {
  let kube: KubeApiServer;
  let kubectl: Kubectl;
  let server: TestServer;
  const operators: RunningOperator[] = [];

  const token = async (sa: string, audience?: string) =>
    (await mustKubectl(kubectl, ['create', 'token', sa, '-n', NS, '--duration', '1h', ...(audience === undefined ? [] : ['--audience', audience])])).trim();

  beforeAll(async () => {
    kube = await startKubeApiServer(assets ?? '');
    kubectl = kubectlFor(assets ?? '', kube.kubeconfigPath);
    await installCrd(kubectl);
    for (const ns of [NS, 'team-a']) await mustKubectl(kubectl, ['create', 'namespace', ns]);
    // A hardened cluster does not let every ServiceAccount read the issuer's keys: only the chart's grant may.
    await mustKubectl(kubectl, ['delete', 'clusterrolebinding', 'system:service-account-issuer-discovery']);

    const identity = (await renderChart({ releaseName: 'lethe', namespace: NS })).filter((d) =>
      ['ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding'].includes(String(d.kind)),
    );
    expect(identity.map((d) => `${String(d.kind)}/${String((d.metadata as { name: string }).name)}`).sort()).toEqual([
      'ClusterRole/lethe-operator',
      'ClusterRole/lethe-server',
      'ClusterRoleBinding/lethe-operator',
      'ClusterRoleBinding/lethe-server',
      'Role/lethe-operator-leader-election',
      'RoleBinding/lethe-operator-leader-election',
      'ServiceAccount/lethe-operator',
      'ServiceAccount/lethe-server',
    ]);
    await mustKubectl(kubectl, ['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: identity }));
    await mustKubectl(kubectl, ['create', 'serviceaccount', 'unbound', '-n', NS]);

    server = await startTestServer({
      LETHE_SERVICE_ACCOUNT_ISSUER: kube.serviceAccountIssuer,
      KUBECONFIG: kube.kubeconfigForToken(await token('lethe-server')),
      LETHE_PLATFORM_PRINCIPALS: OPERATOR_PRINCIPAL,
    });
  }, 120_000);

  afterAll(async () => {
    for (const o of operators) await o.stop();
    await server?.stop();
    await kube?.destroy();
  }, 60_000);

  const startAs = async (sa: string, logger = capturingLogger({ level: 'debug' }).logger) => {
    const tokenFile = join(server.dataDir, `${sa}.token`);
    writeFileSync(tokenFile, await token(sa, 'lethe'), { mode: 0o600 });
    const operator = await startTestOperator(
      {
        KUBECONFIG: kube.kubeconfigForToken(await token(sa)),
        LETHE_SERVER: server.address,
        LETHE_TOKEN_FILE: tokenFile,
        LETHE_LEADER_ELECTION_NAMESPACE: NS,
        POD_NAME: sa,
      },
      logger,
    );
    operators.push(operator);
    return operator;
  };

  it('carries out a Forget as system:serviceaccount:lethe:lethe-operator, with nothing but those rules', async () => {
    const operator = await startAs('lethe-operator');
    await waitFor('the cache to sync', async () => operator.isReady());
    await mustKubectl(
      kubectl,
      ['apply', '-f', '-'],
      privacyRequestYaml('team-a', 'forget-user-123', { type: 'Forget', subjectId: 'user-id-123', reason: 'GDPR Right to be Forgotten' }),
    );
    const done = await privacyRequests(kube.kubeconfigPath).waitForPhase('team-a', 'forget-user-123', 'Succeeded');

    // The ledger names the operator's ServiceAccount as the requester: the server verified its token.
    const admin = await server.clientAs('platform-owner-id');
    const { request } = await admin.getPrivacyRequest({ id: done.status?.requestId ?? '' });
    expect(request?.requester).toBe(OPERATOR_PRINCIPAL);
    const events = JSON.parse(await mustKubectl(kubectl, ['get', 'events', '-n', 'team-a', '-o', 'json'])) as { items: Array<{ reason: string }> };
    // Carried out within a second: one status write and one Event, its outcome.
    expect(events.items.map((e) => e.reason)).toEqual(['Erased']);
    expect(await mustKubectl(kubectl, ['get', 'lease', 'lethe-operator', '-n', NS, '-o', 'jsonpath={.spec.holderIdentity}'])).toBe('lethe-operator');
    await operator.stop();
  }, 60_000);

  it('without those rules it is never ready and says which grant is missing', async () => {
    const { logger, lines } = capturingLogger({ level: 'debug' });
    const operator = await startAs('unbound', logger);
    const forbidden = await waitFor('the refusal to be logged', async () => lines().find((r) => r.status === 403));
    expect(forbidden).toMatchObject({
      level: 50,
      reason: 'Forbidden',
      msg: expect.stringContaining("the operator's identity may not list and watch privacyrequests.privacy.lethe.dev: grant it the Helm chart's operator RBAC"),
    });
    expect(operator.isReady()).toBe(false);
    const res = await fetch(`http://127.0.0.1:${operator.healthAddress.port}/readyz`);
    expect(res.status).toBe(503);
  }, 30_000);
});
