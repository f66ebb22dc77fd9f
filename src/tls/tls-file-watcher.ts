import type { Logger } from 'pino';

/**
 * Reads a set of TLS files every `intervalMs` while started, and hands a changed, valid set to
 * `onChange`. A set that cannot be used (a certificate written before its key, a broken file) is
 * reported once, naming the file, and the previous one stays in use until the files are right.
 * Shared by the server's credentials and the operator's client certificate.
 */
export class TlsFileWatcher<T> {
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<boolean> | undefined;
  /** The problem last reported, so that a broken file is reported once, not every interval. */
  private lastProblem: string | undefined;

  constructor(
    private current: T,
    private readonly opts: {
      /** Reads and checks the files; throws a ConfigError naming the file that is wrong. */
      read(): Promise<T>;
      same(a: T, b: T): boolean;
      onChange(next: T): void;
      intervalMs: number;
      logger: Logger;
      /** What the files are, for the log: "server certificate", "client certificate". */
      what: string;
    },
  ) {}

  get value(): T {
    return this.current;
  }

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => void this.check(), this.opts.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Checks the files now; true when a new set was taken. */
  check(): Promise<boolean> {
    this.checking ??= this.read().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private async read(): Promise<boolean> {
    let next: T;
    try {
      next = await this.opts.read();
    } catch (err) {
      const problem = err instanceof Error ? err.message : String(err);
      if (problem !== this.lastProblem) this.opts.logger.warn({ problem }, `TLS files changed but cannot be used: still using the previous ${this.opts.what}`);
      this.lastProblem = problem;
      return false;
    }
    this.lastProblem = undefined;
    if (this.opts.same(next, this.current)) return false;
    this.current = next;
    this.opts.onChange(next);
    return true;
  }
}
