/**
 * A value read on scrape from something that may be slow (the database): at most one read runs
 * at a time, and a scrape waits for it at most `timeoutMs`. A read that fails or is late gives
 * `undefined`, so the caller can report "unknown" instead of a stale figure.
 */
export function sampleWithTimeout<T>(read: () => Promise<T>, timeoutMs: number): () => Promise<T | undefined> {
  let inFlight: Promise<T | undefined> | undefined;
  return async () => {
    inFlight ??= read()
      .catch(() => undefined)
      .finally(() => {
        inFlight = undefined;
      });
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), timeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([inFlight, late]);
    } finally {
      clearTimeout(timer);
    }
  };
}
