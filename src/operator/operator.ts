import { readFile } from 'node:fs/promises';
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { sleep } from '../runtime/backoff.js';
import { connectPrivacyService, type TokenSource } from '../client/privacy-client.js';
import type { OperatorConfig, OperatorToken } from '../config/operator-config.js';
import { ConfigError, errorSummary } from '../errors.js';
import { startHealthServer } from '../metrics/health-server.js';
import { Lifecycle } from '../runtime/lifecycle.js';
import { loadKubeConfig } from '../kube/kube-config.js';
import { OperatorMetrics } from '../metrics/operator-metrics.js';
import { EventRecorder } from './event-recorder.js';
import { LeaderElector } from './leader-election.js';
import { PrivacyRequestReconciler } from './reconciler.js';
import type { Phase } from './privacy-request.js';
import { PrivacyRequestCache, describeKubeError } from './watch-cache.js';
import { type Reconciler, TerminalError, WorkQueue, runWorkers } from './work-queue.js';

/**
 * `lethe operator`: the watch cache runs on every replica (readiness means it has synced); the
 * work queue and its workers run only on the replica holding the Lease.
 */

export interface RunningOperator {
  readonly healthAddress: { readonly host: string; readonly port: number };
  isReady(): boolean;
  isLeader(): boolean;
  /** Ordered shutdown: stop leading (releasing the Lease), finish reconciles in flight, stop watching. */
  stop(): Promise<void>;
}

export async function startOperator(config: OperatorConfig, logger: Logger): Promise<RunningOperator> {
  const kc = loadKubeConfig(config.kubernetes);

  const { client: privacy, close: closePrivacy } = connectPrivacyService(config.server, tokenSource(config.token), config.tls, {
    intervalMs: config.tlsReloadIntervalMs,
    logger,
  });
  let queue: WorkQueue | undefined;
  const cache = new PrivacyRequestCache(kc, { namespaces: config.namespaces, onChange: (key) => queue?.add(key), logger });
  const reconciler = new PrivacyRequestReconciler({
    cache,
    privacy,
    customObjects: kc.makeApiClient(CustomObjectsApi),
    events: new EventRecorder(kc.makeApiClient(CoreV1Api), config.leaderElection.identity, logger),
    logger,
    pollIntervalMs: config.pollIntervalMs,
    callTimeoutMs: config.callTimeoutMs,
    failpoints: config.failpoints,
  });

  const elector = config.leaderElection.enabled
    ? new LeaderElector(kc.makeApiClient(CoordinationV1Api), { ...config.leaderElection, releaseOnStop: true, logger })
    : undefined;
  const isLeader = () => (elector === undefined ? true : elector.isLeader());
  const metrics = new OperatorMetrics({
    queueDepth: () => queue?.length ?? 0,
    isLeader,
    phases: (): Iterable<Phase> => cache.list().map((obj) => obj.status?.phase ?? 'Pending'),
  });
  const reconcile = measured(reconciler.reconcile, metrics);

  const lead = async (leadership: AbortSignal): Promise<void> => {
    while (!cache.hasSynced() && !leadership.aborted) await sleep(100, leadership);
    if (leadership.aborted) return;
    const q = new WorkQueue();
    queue = q;
    for (const key of cache.keys()) q.add(key);
    leadership.addEventListener('abort', () => q.shutDown(), { once: true });
    logger.info({ concurrency: config.concurrency, resources: q.length }, 'reconciling PrivacyRequests');
    await runWorkers(q, reconcile, config.concurrency, (key, err, retryInMs) => {
      if (err instanceof TerminalError) return logger.info({ resource: key, refusal: err.message }, 'request refused: failed for good, not retried');
      const level = (err as { code?: unknown }).code === 409 ? 'debug' : 'warn';
      logger[level]({ resource: key, ...describeKubeError(err), retryInMs }, 'reconcile failed');
    });
    if (queue === q) queue = undefined;
  };

  // Stopped in reverse order: stop leading (releasing the Lease) and finish the reconciles in
  // flight, stop watching, close the listener and the client.
  const life = new Lifecycle(logger);
  return life.build(async () => {
    life.defer('PrivacyService client', closePrivacy);
    const health = await life.open(
      'health listener',
      () => startHealthServer(config.healthListen, () => cache.hasSynced(), { metrics: metrics.registry }),
      (h) => h.close(),
    );
    await life.start('PrivacyRequest watch', cache);
    const stopping = new AbortController();
    const running = (elector !== undefined ? elector.run(stopping.signal, lead) : lead(stopping.signal)).catch((err: unknown) =>
      logger.error({ err: errorSummary(err) }, 'the operator stopped working'),
    );
    life.defer('reconciling', async () => {
      stopping.abort();
      await running;
    });
    logger.info(
      { server: config.server, namespaces: config.namespaces.length === 0 ? 'all' : config.namespaces, leaderElection: config.leaderElection.enabled },
      'operator started',
    );
    return {
      healthAddress: health.address,
      isReady: () => cache.hasSynced(),
      isLeader,
      stop: () => life.stop(),
    };
  });
}

/** The reconciler, timed and counted by result; what it returns or throws passes through unchanged. */
function measured(reconcile: Reconciler, metrics: OperatorMetrics): Reconciler {
  return async (key) => {
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1_000;
    try {
      const result = await reconcile(key);
      metrics.reconciled(result?.requeueAfterMs !== undefined ? 'requeue' : 'success', seconds());
      return result;
    } catch (err) {
      metrics.reconciled(err instanceof TerminalError ? 'terminal' : 'error', seconds());
      throw err;
    }
  };
}

function tokenSource(token: OperatorToken): TokenSource {
  if (token.kind === 'static') return token.token;
  return async () => {
    try {
      return (await readFile(token.path, 'utf8')).trim();
    } catch (err) {
      throw new ConfigError(
        `cannot read the token file (${(err as NodeJS.ErrnoException).code ?? 'error'}); is the projected ServiceAccount token mounted?`,
        'LETHE_TOKEN_FILE',
        { cause: err },
      );
    }
  };
}
