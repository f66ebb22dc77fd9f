import { exponentialDelay } from '../runtime/backoff.js';

/**
 * A per-key deduplicated work queue, as controller-runtime's: a key added many times while it
 * waits is processed once; a key is never processed by two workers at once (one added while it
 * is being processed runs again afterwards); failures come back after an exponential delay.
 */

export interface BackoffOptions {
  /** First retry delay (default 5 ms). */
  readonly baseMs?: number;
  /** Longest retry delay (default 1000 s). */
  readonly maxMs?: number;
}

export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private waiters: Array<(key: string | undefined) => void> = [];
  private shuttingDown = false;
  private readonly baseMs: number;
  private readonly maxMs: number;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? 5;
    this.maxMs = options.maxMs ?? 1_000_000;
  }

  get length(): number {
    return this.queue.length;
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      waiter(key);
    } else {
      this.queue.push(key);
    }
  }

  /** Adds the key after `ms`; an earlier pending delayed add of the same key wins. */
  addAfter(key: string, ms: number): void {
    if (this.shuttingDown || this.timers.has(key)) return;
    if (ms <= 0) return this.add(key);
    const t = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, ms);
    t.unref();
    this.timers.set(key, t);
  }

  /** Adds the key after its next backoff delay: base · 2^failures, capped. */
  addRateLimited(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = exponentialDelay(n, this.baseMs, this.maxMs);
    this.addAfter(key, delay);
    return delay;
  }

  /** The key succeeded (or failed for good): its next failure starts from the base delay again. */
  forget(key: string): void {
    this.failures.delete(key);
  }

  /** The next key to process; `undefined` once the queue shuts down. */
  get(): Promise<string | undefined> {
    const key = this.queue.shift();
    if (key !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    if (this.shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Processing of `key` ended; if it was added meanwhile, it is queued again. */
  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
  }

  shutDown(): void {
    this.shuttingDown = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w(undefined);
  }
}

/** A failure that retrying cannot fix (refused by policy, unknown user): not requeued. */
export class TerminalError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TerminalError';
  }
}

export interface ReconcileResult {
  /** Look again after this long even if nothing changes (e.g. to poll downstream confirmations). */
  readonly requeueAfterMs?: number;
}

export type Reconciler = (key: string) => Promise<ReconcileResult | void>;

/**
 * Runs `concurrency` workers over the queue until it shuts down: success forgets the key's
 * failures (and requeues it after `requeueAfterMs` when asked), a thrown error requeues it with
 * backoff, a TerminalError does not requeue. Resolves when every worker has finished.
 */
export async function runWorkers(
  queue: WorkQueue,
  reconcile: Reconciler,
  concurrency: number,
  onError: (key: string, err: unknown, retryInMs: number | undefined) => void,
): Promise<void> {
  const worker = async () => {
    for (;;) {
      const key = await queue.get();
      if (key === undefined) return;
      try {
        const result = await reconcile(key);
        queue.forget(key);
        if (result?.requeueAfterMs !== undefined) queue.addAfter(key, result.requeueAfterMs);
      } catch (err) {
        if (err instanceof TerminalError) {
          queue.forget(key);
          onError(key, err, undefined);
        } else {
          onError(key, err, queue.addRateLimited(key));
        }
      } finally {
        queue.done(key);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}
