import { type JSONWebKeySet, type JWTVerifyGetKey, createLocalJWKSet, errors } from 'jose';
import { exponentialDelay } from '../runtime/backoff.js';
import { LetheError, UnavailableError } from '../errors.js';

export interface RefreshingKeySetOptions {
  /** The least time between fetches once keys are held: a token naming an unknown `kid` refetches at most this often. */
  readonly cooldownMs: number;
  /** After a failed fetch, the first delay before another may start; doubling up to cooldownMs. */
  readonly retryBaseMs: number;
  readonly now?: () => number;
}

/**
 * A JWK set fetched on first use and again when a token names a key it does not hold (the
 * issuer rotated its keys), at most once per cooldown, so that tokens with made-up key ids
 * cannot make the server hammer the key source. Concurrent callers share one fetch. While the
 * source cannot be reached, callers get its UNAVAILABLE error without a new fetch until the
 * retry delay has passed; the keys already held keep verifying meanwhile.
 */
export class RefreshingKeySet {
  private keys: ReturnType<typeof createLocalJWKSet> | undefined;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private failures = 0;
  private lastFailure: LetheError | undefined;
  private inFlight: Promise<void> | undefined;
  private readonly now: () => number;

  constructor(
    private readonly fetchKeys: () => Promise<JSONWebKeySet>,
    private readonly options: RefreshingKeySetOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    if (this.keys === undefined) await this.refresh(undefined);
    try {
      return await this.held()(header, token);
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey)) throw err;
      await this.refresh(err);
      return this.held()(header, token);
    }
  };

  /** Fetches now unless the last attempt is too recent (then `otherwise`, or the last failure, is thrown). */
  refresh(otherwise: Error | undefined): Promise<void> {
    if (this.inFlight !== undefined) return this.inFlight;
    const wait =
      this.lastFailure === undefined ? this.options.cooldownMs : exponentialDelay(this.failures - 1, this.options.retryBaseMs, this.options.cooldownMs);
    if (this.now() - this.lastAttemptAt < wait) {
      const reason = this.lastFailure ?? otherwise;
      if (reason !== undefined) return Promise.reject(reason);
    }
    this.inFlight = this.fetchOnce().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  private held(): ReturnType<typeof createLocalJWKSet> {
    if (this.keys === undefined) throw new UnavailableError('No verification keys are loaded yet; retry later');
    return this.keys;
  }

  private async fetchOnce(): Promise<void> {
    this.lastAttemptAt = this.now();
    try {
      const jwks = await this.fetchKeys();
      this.keys = createLocalJWKSet(jwks);
      this.failures = 0;
      this.lastFailure = undefined;
    } catch (err) {
      this.failures += 1;
      this.lastFailure = err instanceof LetheError ? err : new UnavailableError('Cannot fetch the keys to verify the token; retry later', { cause: err });
      throw this.lastFailure;
    }
  }
}
