import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { loadOperatorConfig } from '../../src/config/operator-config.js';
import { type RunningOperator, startOperator } from '../../src/operator/operator.js';
import type { PrivacyRequestResource } from '../../src/operator/privacy-request.js';
import { silentLogger } from './engine-fixture.js';
import { waitFor } from './streams.js';

/** Fast leader election and polling, so tests see hand-overs in seconds. */
const FAST_OPERATOR_ENV = {
  LETHE_LOG_LEVEL: 'silent',
  LETHE_HEALTH_LISTEN: '127.0.0.1:0',
  LETHE_OPERATOR_POLL_INTERVAL: '200ms',
  LETHE_LEADER_ELECTION_LEASE: '2s',
  LETHE_LEADER_ELECTION_RENEW_DEADLINE: '1500ms',
  LETHE_LEADER_ELECTION_RETRY: '200ms',
} as const;

export async function startTestOperator(env: Record<string, string | undefined>, logger: Logger = silentLogger): Promise<RunningOperator> {
  return startOperator(loadOperatorConfig({ ...FAST_OPERATOR_ENV, ...env }), logger);
}

export interface OperatorProcess {
  readonly child: ChildProcess;
  output(): string;
  exited: Promise<number | string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** `lethe operator` as its own process (the built CLI), for crash and leader-election tests. */
export function spawnOperator(env: Record<string, string | undefined>): OperatorProcess {
  const child = spawn(process.execPath, [join(process.cwd(), 'bin', 'lethe.js'), 'operator'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...FAST_OPERATOR_ENV, LETHE_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return {
    child,
    output: () => out,
    exited,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

/** Reads PrivacyRequests straight from the API server (not through any cache). */
export function privacyRequests(kubeconfigPath: string) {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigPath);
  const api = kc.makeApiClient(CustomObjectsApi);
  const get = async (namespace: string, name: string) =>
    (await api.getNamespacedCustomObject({
      group: 'privacy.lethe.dev',
      version: 'v1alpha1',
      plural: 'privacyrequests',
      namespace,
      name,
    })) as PrivacyRequestResource;
  return {
    get,
    async waitForPhase(namespace: string, name: string, phase: string, timeoutMs = 30_000): Promise<PrivacyRequestResource> {
      return waitFor(
        `${namespace}/${name} to reach ${phase}`,
        async () => {
          const obj = await get(namespace, name);
          return obj.status?.phase === phase ? obj : undefined;
        },
        timeoutMs,
      );
    },
  };
}
