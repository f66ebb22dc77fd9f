/** Retry delays and waits shared by the relay, the consumers, the sidecar and the operator. */

/** base · 2^attempt, capped (attempt 0 gives the base); large attempts cannot overflow past the cap. */
export function exponentialDelay(attempt: number, baseMs: number, capMs: number): number {
  return Math.min(capMs, baseMs * 2 ** Math.min(Math.max(0, Math.floor(attempt)), 40));
}

/** Exponential backoff with full jitter: a random delay up to base·2^attempt, capped. */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  return Math.max(baseMs, Math.floor(random() * exponentialDelay(attempt, baseMs, capMs)));
}

/** Sleeps, waking early when `signal` aborts (then resolves). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
