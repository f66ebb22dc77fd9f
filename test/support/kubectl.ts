import { spawn } from 'node:child_process';
import { join } from 'node:path';

export interface KubectlResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the harness's kubectl asynchronously (never blocking the event loop of in-process servers). */
export function kubectlFor(assetsDir: string, kubeconfigPath: string) {
  return (args: readonly string[], stdin?: string): Promise<KubectlResult> =>
    new Promise((resolve) => {
      const p = spawn(join(assetsDir, 'kubectl'), ['--kubeconfig', kubeconfigPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
      p.stdin.end(stdin ?? '');
    });
}

export type Kubectl = ReturnType<typeof kubectlFor>;

/** kubectl that must succeed: returns stdout, throws with stderr otherwise. */
export async function mustKubectl(kubectl: Kubectl, args: readonly string[], stdin?: string): Promise<string> {
  const r = await kubectl(args, stdin);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

export const CRD_PATH = join(process.cwd(), 'deploy', 'helm', 'lethe', 'files', 'privacyrequests.privacy.lethe.dev.yaml');

/** Applies the PrivacyRequest CRD and waits until the API server serves it. */
export async function installCrd(kubectl: Kubectl): Promise<void> {
  await mustKubectl(kubectl, ['apply', '-f', CRD_PATH]);
  await mustKubectl(kubectl, ['wait', '--for=condition=Established', 'crd/privacyrequests.privacy.lethe.dev', '--timeout=30s']);
}

export function privacyRequestYaml(
  namespace: string,
  name: string,
  spec: { type: string; subjectId: string; reason?: string; requestedBy?: string; purposes?: string[]; basis?: string },
): string {
  return `apiVersion: privacy.lethe.dev/v1alpha1
kind: PrivacyRequest
metadata: {name: ${name}, namespace: ${namespace}}
spec:
  type: ${spec.type}
  subjectId: ${spec.subjectId}
  requestedBy: ${spec.requestedBy ?? 'privacy-desk-ticket-1'}
${spec.reason === undefined ? '' : `  reason: ${JSON.stringify(spec.reason)}\n`}${spec.purposes === undefined ? '' : `  purposes: ${JSON.stringify(spec.purposes)}\n`}${spec.basis === undefined ? '' : `  basis: ${spec.basis}\n`}`;
}
