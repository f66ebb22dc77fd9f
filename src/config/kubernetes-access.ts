import { delimiter, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import type { Env } from './common.js';

/** How a component reaches the Kubernetes API server. */
export type KubernetesAccess =
  /** A pod's own service account: KUBERNETES_SERVICE_HOST/PORT and the mounted token and CA. */
  | { readonly source: 'in-cluster'; readonly host: string; readonly port: number; readonly neededBy: string }
  /** Outside a cluster (tests, development): the kubeconfig file named by KUBECONFIG. */
  | { readonly source: 'kubeconfig'; readonly path: string };

/**
 * As controller-runtime decides: KUBECONFIG when set, else the pod's in-cluster service account.
 * `neededBy` names the setting that needs the API server, and says why, for the error when
 * neither is there.
 */
export function kubernetesAccess(env: Env, neededBy: { readonly setting: string; readonly why: string }): KubernetesAccess {
  const kubeconfig = env.KUBECONFIG?.trim();
  if (kubeconfig !== undefined && kubeconfig !== '') {
    if (kubeconfig.includes(delimiter)) throw new ConfigError('name one kubeconfig file (a list of files is not supported)', 'KUBECONFIG');
    return { source: 'kubeconfig', path: resolve(kubeconfig) };
  }
  const host = env.KUBERNETES_SERVICE_HOST?.trim();
  if (host === undefined || host === '') {
    throw new ConfigError(`${neededBy.why}: run in a pod (in-cluster: KUBERNETES_SERVICE_HOST) or set KUBECONFIG`, neededBy.setting);
  }
  const port = Number(env.KUBERNETES_SERVICE_PORT ?? '443');
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new ConfigError(`'${env.KUBERNETES_SERVICE_PORT ?? ''}' is not a port`, 'KUBERNETES_SERVICE_PORT');
  return { source: 'in-cluster', host, port, neededBy: neededBy.setting };
}
