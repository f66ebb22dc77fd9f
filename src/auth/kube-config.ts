import { accessSync, constants } from 'node:fs';
import { isIPv6 } from 'node:net';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import type { KubernetesAccess } from '../config/config.js';
import { ConfigError } from '../errors.js';

/** Where the kubelet mounts a pod's service-account token and the cluster CA. */
export const IN_CLUSTER_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/**
 * The client configuration for the API server, from what src/config read: a kubeconfig file,
 * or the pod's own service account. In-cluster is KubeConfig.loadFromCluster()'s result built
 * from the configured host and port (loadFromCluster would read process.env itself); the token
 * file is re-read as the kubelet rotates it.
 */
export function loadKubeConfig(access: KubernetesAccess, inClusterDir = IN_CLUSTER_DIR): KubeConfig {
  const kc = new KubeConfig();
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
        `is set and the server runs in a pod, but ${file} cannot be read: mount the pod's service-account token (automountServiceAccountToken), or set KUBECONFIG`,
        'LETHE_SERVICE_ACCOUNT_ISSUER',
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
