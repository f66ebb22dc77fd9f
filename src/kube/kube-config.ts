import { accessSync, constants } from 'node:fs';
import { isIPv6 } from 'node:net';
import { join } from 'node:path';
import { Agent } from 'node:https';
import { KubeConfig, type RequestContext } from '@kubernetes/client-node';
import type { KubernetesAccess } from '../config/kubernetes-access.js';
import { ConfigError } from '../errors.js';

/** Where the kubelet mounts a pod's service-account token and the cluster CA. */
const IN_CLUSTER_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/**
 * The client configuration for the API server, from what src/config read: a kubeconfig file,
 * or the pod's own service account. In-cluster is KubeConfig.loadFromCluster()'s result built
 * from the configured host and port (loadFromCluster would read process.env itself); the token
 * file is re-read as the kubelet rotates it. API calls share one keep-alive connection pool.
 */
export function loadKubeConfig(access: KubernetesAccess, inClusterDir = IN_CLUSTER_DIR): KubeConfig {
  const kc = new KeepAliveKubeConfig();
  if (access.source === 'kubeconfig') {
    try {
      kc.loadFromFile(access.path);
    } catch (err) {
      const reason = (err as NodeJS.ErrnoException).code ?? 'not a kubeconfig file';
      throw new ConfigError(`cannot load ${access.path} (${reason})`, 'KUBECONFIG', { cause: err });
    }
    if (kc.getCurrentCluster() === null || kc.getCurrentUser() === null) {
      throw new ConfigError(`${access.path} has no current-context naming a cluster and a user`, 'KUBECONFIG');
    }
    return kc;
  }
  const tokenFile = join(inClusterDir, 'token');
  const caFile = join(inClusterDir, 'ca.crt');
  for (const file of [tokenFile, caFile]) {
    try {
      accessSync(file, constants.R_OK);
    } catch {
      throw new ConfigError(
        `needs the Kubernetes API server, and in this pod ${file} cannot be read: mount the pod's service-account token (automountServiceAccountToken), or set KUBECONFIG`,
        access.neededBy,
      );
    }
  }
  const host = isIPv6(access.host) ? `[${access.host}]` : access.host;
  kc.loadFromClusterAndUser(
    { name: 'in-cluster', server: `https://${host}:${access.port}`, caFile, skipTLSVerify: false },
    { name: 'in-cluster', authProvider: { name: 'tokenFile', config: { tokenFile } } },
  );
  return kc;
}

/**
 * client-node 1.x builds a new https.Agent for every API call, so each call pays a TCP and TLS
 * handshake (measured: most of the operator's CPU per PrivacyRequest). This keeps the first
 * agent's TLS options (CA, client certificate) and reuses one keep-alive agent; credentials that
 * travel in headers (tokens, rotated token files) are still applied per call.
 */
class KeepAliveKubeConfig extends KubeConfig {
  private agent: Agent | undefined;

  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    await super.applySecurityAuthentication(context);
    const fresh = context.getAgent();
    if (!(fresh instanceof Agent)) return;
    this.agent ??= new Agent({ ...fresh.options, keepAlive: true });
    context.setAgent(this.agent);
  }
}
