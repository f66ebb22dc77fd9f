/**
 * A counting semaphore: at most `size` holders at once, waiters served in arrival order.
 */
export class Slots {
  private used = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`slots: size must be a positive integer, not ${size}`);
  }

  get inUse(): number {
    return this.used;
  }

  /** Resolves once a slot is free; the caller must `release()` it exactly once. */
  acquire(): Promise<void> {
    if (this.used < this.size) {
      this.used++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    // The slot passes straight to the next waiter: `used` stays the same.
    if (next !== undefined) next();
    else if (this.used > 0) this.used--;
  }
}
