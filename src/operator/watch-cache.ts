import type { Runnable } from '../runtime/lifecycle.js';
import { CustomObjectsApi, type Informer, type KubeConfig, type KubernetesListObject, type ObjectCache, makeInformer } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { backoffDelay } from '../runtime/backoff.js';
import { errorSummary } from '../errors.js';
import { GROUP, PLURAL, type PrivacyRequestResource, VERSION, keyOf } from './privacy-request.js';

/**
 * The operator's view of PrivacyRequests: one list-and-watch per watched namespace (or one for
 * all), built on client-node's informer, which re-lists after `410 Gone`. A watch that fails
 * (the API server restarted or is unreachable) is restarted here with jittered exponential
 * backoff; the process never exits over it.
 */

export interface WatchCacheOptions {
  /** Namespaces to watch; empty: all. */
  readonly namespaces: readonly string[];
  /** Called with `namespace/name` for every add, update and delete. */
  readonly onChange: (key: string) => void;
  readonly logger: Logger;
  readonly restartBaseMs?: number;
  readonly restartMaxMs?: number;
}

/** How one scope's list-and-watch is doing. */
interface WatchState {
  readonly scope: string;
  listed: boolean;
  /** Consecutive failed (re)starts: the backoff exponent. */
  failures: number;
  /** Errors seen in all: a restart that saw none succeeded. */
  errors: number;
  timer: NodeJS.Timeout | undefined;
}

type Watched = WatchState & { readonly informer: Informer<PrivacyRequestResource> & ObjectCache<PrivacyRequestResource> };

export class PrivacyRequestCache implements Runnable {
  private readonly watched: Watched[];
  private stopped = false;

  constructor(
    kc: KubeConfig,
    private readonly opts: WatchCacheOptions,
  ) {
    const api = kc.makeApiClient(CustomObjectsApi);
    const scopes = opts.namespaces.length === 0 ? [undefined] : opts.namespaces;
    this.watched = scopes.map((namespace) => {
      const path = namespace === undefined ? `/apis/${GROUP}/${VERSION}/${PLURAL}` : `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/${PLURAL}`;
      const state: WatchState = { scope: namespace ?? '*', listed: false, failures: 0, errors: 0, timer: undefined };
      const list = async (): Promise<KubernetesListObject<PrivacyRequestResource>> => {
        const res = (await (namespace === undefined
          ? api.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL })
          : api.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL }))) as KubernetesListObject<PrivacyRequestResource>;
        state.listed = true;
        state.failures = 0;
        opts.logger.debug({ scope: state.scope, count: res.items.length }, 'listed PrivacyRequests');
        return res;
      };
      const w: Watched = Object.assign(state, { informer: makeInformer<PrivacyRequestResource>(kc, path, list) });
      const { informer } = w;
      const changed = (obj: PrivacyRequestResource) => opts.onChange(keyOf(obj));
      informer.on('add', changed);
      informer.on('update', changed);
      informer.on('delete', changed);
      informer.on('error', (err: unknown) => this.restartLater(w, err));
      return w;
    });
  }

  /** Starts every watch; resolves once each has tried its first list (see hasSynced). */
  async start(): Promise<void> {
    this.stopped = false;
    await Promise.all(this.watched.map((w) => w.informer.start()));
  }

  /** True once every watched scope has been listed: the cache may be trusted. */
  hasSynced(): boolean {
    return this.watched.every((w) => w.listed);
  }

  get(namespace: string, name: string): PrivacyRequestResource | undefined {
    for (const w of this.watched) {
      const obj = w.informer.get(name, namespace);
      if (obj !== undefined) return obj;
    }
    return undefined;
  }

  list(): PrivacyRequestResource[] {
    return this.watched.flatMap((w) => w.informer.list());
  }

  keys(): string[] {
    return this.list().map(keyOf);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const w of this.watched) {
      if (w.timer !== undefined) clearTimeout(w.timer);
      await w.informer.stop();
    }
  }

  private restartLater(w: Watched, err: unknown): void {
    w.errors++;
    if (this.stopped || w.timer !== undefined) return;
    const delay = backoffDelay(w.failures++, this.opts.restartBaseMs ?? 500, this.opts.restartMaxMs ?? 30_000);
    const problem = describeKubeError(err);
    const hint = problem.status === 403 ? FORBIDDEN : problem.status === 404 ? NO_CRD : undefined;
    this.opts.logger[hint === undefined ? 'warn' : 'error'](
      { scope: w.scope, ...problem, retryInMs: delay },
      hint ?? 'PrivacyRequest watch failed; restarting it',
    );
    w.timer = setTimeout(() => {
      w.timer = undefined;
      if (this.stopped) return;
      const before = w.errors;
      void w.informer.start().then(() => {
        if (w.errors !== before) return;
        w.failures = 0;
        this.opts.logger.info({ scope: w.scope }, 'PrivacyRequest watch restarted');
      });
    }, delay);
    w.timer.unref();
  }
}

const FORBIDDEN =
  "the operator's identity may not list and watch privacyrequests.privacy.lethe.dev: grant it the Helm chart's operator RBAC (get, list, watch on privacyrequests; update on privacyrequests/status; create on events)";

const NO_CRD =
  'the PrivacyRequest CRD is not installed: helm install the chart with crds.enabled=true, or kubectl apply -f deploy/helm/lethe/files/privacyrequests.privacy.lethe.dev.yaml';

/** An API server error as a log line can carry it: HTTP status and Kubernetes reason, nothing else. */
export function describeKubeError(err: unknown): { status?: number; reason?: string; err: ReturnType<typeof errorSummary> } {
  const code = (err as { code?: unknown }).code;
  const status = typeof code === 'number' ? code : (err as { statusCode?: unknown }).statusCode;
  let reason: string | undefined;
  try {
    const body = (err as { body?: unknown }).body;
    const parsed: unknown = typeof body === 'string' ? JSON.parse(body) : body;
    const r = (parsed as { reason?: unknown } | undefined)?.reason;
    if (typeof r === 'string') reason = r;
  } catch {
    // not a Kubernetes Status body
  }
  return { ...(typeof status === 'number' ? { status } : {}), ...(reason !== undefined ? { reason } : {}), err: errorSummary(err) };
}
