import { join } from 'node:path';
import { CHART_DIR, requireHelm } from './helm.js';
import { requireKubeAssets } from './kube-apiserver.js';

/** What the Helm chart tests share: the chart's paths, manifest shapes and finders, the RBAC the chart must render. */
export const repo = process.cwd();
export const ALL_FEATURES = join(repo, 'test', 'fixtures', 'helm', 'all-features.yaml');
export const CRD_FILE = join(CHART_DIR, 'files', 'privacyrequests.privacy.lethe.dev.yaml');
export const SIDECAR_SNIPPET = join(CHART_DIR, 'examples', 'sidecar-snippet.yaml');
export const SERVICE_MONITOR_CRD = join(repo, 'test', 'fixtures', 'helm', 'servicemonitors.monitoring.coreos.com.yaml');
export const CERTIFICATE_CRD = join(repo, 'test', 'fixtures', 'helm', 'certificates.cert-manager.io.yaml');
export const RELEASE_NS = 'lethe';
export const RESTRICTED_CONTAINER = {
  runAsNonRoot: true,
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ['ALL'] },
  seccompProfile: { type: 'RuntimeDefault' },
};

export const helm = requireHelm();
export const assets = helm === undefined ? undefined : requireKubeAssets();

export type Manifest = Record<string, unknown>;
export interface Meta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string }; configMapKeyRef?: { name: string; key: string }; fieldRef?: { fieldPath: string } };
}
export interface Container {
  name: string;
  image: string;
  args: string[];
  env: EnvVar[];
  securityContext?: Record<string, unknown>;
  readinessProbe?: Record<string, unknown>;
  livenessProbe?: Record<string, unknown>;
  startupProbe?: Record<string, unknown>;
  resources?: { limits?: Record<string, string> };
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}
interface PodSpec {
  serviceAccountName: string;
  automountServiceAccountToken?: boolean;
  securityContext?: Record<string, unknown>;
  containers: Container[];
  initContainers?: Container[];
  volumes: Array<{
    name: string;
    projected?: { sources: Array<{ serviceAccountToken?: Record<string, unknown> }> };
    secret?: { secretName: string; items: Array<{ key: string; path: string }> };
  }>;
}
export interface Deployment {
  metadata: Meta;
  spec: { replicas: number; template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec } };
}
export interface Rule {
  apiGroups?: string[];
  resources?: string[];
  nonResourceURLs?: string[];
  verbs: string[];
}
export interface RoleLike {
  kind: string;
  metadata: Meta;
  rules: Rule[];
}
export interface Binding {
  kind: string;
  metadata: Meta;
  roleRef: { kind: string; name: string };
  subjects: Array<{ kind: string; name: string; namespace: string }>;
}

export const meta = (m: Manifest): Meta => m.metadata as Meta;
export const ofKind = <T>(ms: Manifest[], kind: string): T[] => ms.filter((m) => m.kind === kind) as T[];
export function one<T>(ms: Manifest[], kind: string, name: string, namespace?: string): T {
  const found = ms.filter((m) => m.kind === kind && meta(m).name === name && (namespace === undefined || meta(m).namespace === namespace));
  if (found.length !== 1) throw new Error(`expected one ${kind} ${namespace ?? ''}/${name}, found ${found.length}`);
  return found[0] as T;
}
export const envOf = (c: Container, name: string): EnvVar | undefined => c.env.find((e) => e.name === name);
export const container = (d: Deployment, name: string): Container => {
  const c = d.spec.template.spec.containers.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no container ${name} in ${d.metadata.name}`);
  return c;
};

/** The operator's rules, exactly: the least privilege. */
export const OPERATOR_RULES: Rule[] = [
  { apiGroups: ['privacy.lethe.dev'], resources: ['privacyrequests'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['privacy.lethe.dev'], resources: ['privacyrequests/status'], verbs: ['get', 'update', 'patch'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
];
export const LEASE_RULES: Rule[] = [{ apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] }];
export const SERVER_RULES: Rule[] = [{ nonResourceURLs: ['/openid/v1/jwks', '/.well-known/openid-configuration'], verbs: ['get'] }];

interface ServicePort {
  name: string;
  port: number;
  targetPort: string;
}
export interface Service {
  metadata: Meta;
  spec: { selector: Record<string, string>; ports: ServicePort[] };
}
