import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { loadServerConfig } from '../../src/config/config.js';
import type { RunningOperator } from '../../src/operator/operator.js';
import { type RunningServer, startLetheServer } from '../../src/server/lethe-server.js';
import { type KubeApiServer, requireKubeAssets, startKubeApiServer } from '../support/kube-apiserver.js';
import { type Kubectl, installCrd, kubectlFor, mustKubectl, privacyRequestYaml } from '../support/kubectl.js';
import { privacyRequests, startTestOperator } from '../support/operator-fixture.js';
import { sample, scrape } from '../support/prometheus.js';
import { waitFor } from '../support/streams.js';
import { type CertFiles, type TestCa, createTestCa } from '../support/tls.js';
import { capturingLogger } from '../support/logs.js';

/**
 * The operator dials the PrivacyService over mutual TLS, as the chart sets it up (LETHE_TLS_CA,
 * LETHE_TLS_CERT, LETHE_TLS_KEY): a PrivacyRequest applied with kubectl is carried out; an
 * operator without a client certificate is refused at the handshake and gets nowhere.
 */

const assets = requireKubeAssets();
const OPERATOR = 'lethe-operator';

describe.runIf(assets !== undefined)('the operator over mutual TLS', () => {
  let dir: string;
  let dataDir: string;
  let ca: TestCa;
  let operatorCert: CertFiles;
  let kube: KubeApiServer;
  let kubectl: Kubectl;
  let server: RunningServer;
  let token: string;
  const operators: RunningOperator[] = [];
  const env = (namespace: string, tls: Record<string, string>) => ({
    KUBECONFIG: kube.kubeconfigPath,
    LETHE_SERVER: `localhost:${server.port}`,
    LETHE_TOKEN: token,
    LETHE_OPERATOR_NAMESPACES: namespace,
    LETHE_LEADER_ELECTION: 'false',
    ...tls,
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lethe-tls-operator-'));
    dataDir = mkdtempSync(join(tmpdir(), 'lethe-tls-operator-data-'));
    ca = createTestCa(dir, 'ca');
    const serverCert = ca.issue('server', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    operatorCert = ca.issue('operator', { cn: OPERATOR, client: true });
    kube = await startKubeApiServer(assets ?? '');
    kubectl = kubectlFor(assets ?? '', kube.kubeconfigPath);
    await installCrd(kubectl);
    for (const ns of ['privacy', 'refused']) await mustKubectl(kubectl, ['create', 'namespace', ns]);
    const config = loadServerConfig(
      { LETHE_PLATFORM_PRINCIPALS: OPERATOR, LETHE_METRICS_LISTEN: '127.0.0.1:0' },
      {
        demo: true,
        listen: '127.0.0.1:0',
        httpListen: '127.0.0.1:0',
        dataDir,
        tlsCert: serverCert.certFile,
        tlsKey: serverCert.keyFile,
        tlsClientCa: ca.certFile,
      },
    );
    server = await startLetheServer(config, capturingLogger().logger);
    token = await mintLocalToken(dataDir, OPERATOR, 3600);
  }, 180_000);

  afterAll(async () => {
    for (const o of operators) await o.stop();
    await server?.stop(1_000);
    await kube?.destroy();
    rmSync(dir, { recursive: true, force: true });
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);

  it('carries out a Forget through the mTLS PrivacyService', async () => {
    operators.push(
      await startTestOperator(env('privacy', { LETHE_TLS_CA: ca.certFile, LETHE_TLS_CERT: operatorCert.certFile, LETHE_TLS_KEY: operatorCert.keyFile })),
    );
    await mustKubectl(
      kubectl,
      ['apply', '-f', '-'],
      privacyRequestYaml('privacy', 'forget-member', { type: 'Forget', subjectId: 'member-user-id-456', reason: 'GDPR Right to be Forgotten' }),
    );
    const done = await privacyRequests(kube.kubeconfigPath).waitForPhase('privacy', 'forget-member', 'Succeeded', 60_000);
    expect(done.status?.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('an operator without a client certificate is refused at the handshake and carries nothing out', async () => {
    const before = sample((await scrape(server.metricsPort ?? 0)).body, 'lethe_tls_handshake_failures_total', { reason: 'no_client_certificate' }) ?? 0;
    operators.push(await startTestOperator(env('refused', { LETHE_TLS_CA: ca.certFile })));
    await mustKubectl(
      kubectl,
      ['apply', '-f', '-'],
      privacyRequestYaml('refused', 'forget-owner', { type: 'Forget', subjectId: 'owner-user-id-1', reason: 'GDPR Right to be Forgotten' }),
    );
    await waitFor(
      'a refused handshake',
      async () =>
        (sample((await scrape(server.metricsPort ?? 0)).body, 'lethe_tls_handshake_failures_total', { reason: 'no_client_certificate' }) ?? 0) > before,
      30_000,
    );
    const phase = (await privacyRequests(kube.kubeconfigPath).get('refused', 'forget-owner')).status?.phase;
    expect(phase).not.toBe('Succeeded');
  });
});
