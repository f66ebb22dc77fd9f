import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { isExecutable, nonEmpty } from './kube-apiserver.js';

/**
 * helm for the chart tests: the binary scripts/setup-helm.sh builds from the Go module proxy and
 * caches outside the repository (LETHE_HELM, set by .ci/run, overrides the cache), and
 * `helm template` of deploy/helm/lethe parsed into plain objects.
 */

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SETUP_HELM = 'scripts/setup-helm.sh';
export const CHART_DIR = join(repoRoot, 'deploy', 'helm', 'lethe');

/** The helm version scripts/setup-helm.sh pins (read from it: one source of truth). */
const HELM_VERSION: string = (() => {
  const script = readFileSync(join(repoRoot, SETUP_HELM), 'utf8');
  const m = /^HELM_VERSION=(\d+\.\d+\.\d+)\s*$/m.exec(script);
  if (m?.[1] === undefined) throw new Error(`no HELM_VERSION=x.y.z line in ${SETUP_HELM}`);
  return m[1];
})();

/** Where scripts/setup-helm.sh caches the pinned helm. */
function helmCachePath(): string {
  const root = nonEmpty(process.env.LETHE_HELM_CACHE) ?? join(nonEmpty(process.env.XDG_CACHE_HOME) ?? join(homedir(), '.cache'), 'lethe', 'tools');
  return join(root, `helm-${HELM_VERSION}`, 'helm');
}

/** LETHE_HELM when it is an executable, else the cached pinned helm. */
function findHelm(): string | undefined {
  return [nonEmpty(process.env.LETHE_HELM), helmCachePath()].find((p): p is string => p !== undefined && isExecutable(p));
}

/** findHelm(), or: undefined with a warning locally, an error under CI=true. */
export function requireHelm(): string | undefined {
  const helm = findHelm();
  if (helm === undefined) {
    const how = `export LETHE_HELM="$(${SETUP_HELM})"  (builds helm v${HELM_VERSION} with Go into ${dirname(helmCachePath())})`;
    if (process.env.CI === 'true') throw new Error(`helm not found (CI=true forbids skipping): ${how}`);
    console.warn(`helm not found: skipping the Helm chart suites. To run them: ${how}`);
  }
  return helm;
}

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command asynchronously (never blocks the event loop), feeding it stdin, and collects its output. */
export function runCommand(bin: string, args: readonly string[], stdin = ''): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, [...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    // A command that exits without reading its input (e.g. it failed at once) closes the pipe
    // under us: its exit code says what happened, the EPIPE adds nothing.
    p.stdin.on('error', () => undefined);
    p.stdin.end(stdin);
  });
}

/** Runs the helm findHelm() finds. */
export function runHelm(args: readonly string[]): Promise<CommandResult> {
  const helm = findHelm();
  if (helm === undefined) return Promise.reject(new Error(`helm not found: run ${SETUP_HELM}`));
  return runCommand(helm, args);
}

export interface RenderOptions {
  /** Default: lethe. */
  releaseName?: string;
  /** Default: lethe. */
  namespace?: string;
  valuesFiles?: string[];
  set?: Record<string, string>;
}

/** The chart's `helm template` arguments for these options (shared by renderChart and the tests). */
export function templateArgs(options: RenderOptions = {}): string[] {
  const args = ['template', options.releaseName ?? 'lethe', CHART_DIR, '--namespace', options.namespace ?? 'lethe'];
  for (const f of options.valuesFiles ?? []) args.push('--values', f);
  for (const [k, v] of Object.entries(options.set ?? {})) args.push('--set', `${k}=${v}`);
  return args;
}

/** `helm template` of the chart, every non-empty document parsed. Rejects with helm's message on failure. */
export async function renderChart(options: RenderOptions = {}): Promise<Array<Record<string, unknown>>> {
  const r = await runHelm(templateArgs(options));
  if (r.code !== 0) throw new Error(`helm template failed (${r.code}): ${r.stderr.trim()}`);
  return parseManifests(r.stdout);
}

/** A multi-document YAML stream → its non-empty documents; a YAML error throws. */
export function parseManifests(text: string): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`invalid YAML in rendered manifests: ${doc.errors[0]?.message ?? ''}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    if (typeof value !== 'object' || Array.isArray(value)) throw new Error('a rendered document is not a Kubernetes object');
    out.push(value as Record<string, unknown>);
  }
  return out;
}
