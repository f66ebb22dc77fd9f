import { Writable } from 'node:stream';
import { type Logger, pino } from 'pino';

/** A pino logger whose JSON lines a test can read back. */
export interface CapturedLogger {
  readonly logger: Logger;
  /** Every line logged so far, parsed. */
  lines(): Array<Record<string, unknown>>;
  text(): string;
}

/**
 * `bare`: lines without pid, hostname and time, for tests that compare whole lines.
 */
export function capturingLogger(opts: { level?: string; bare?: boolean } = {}): CapturedLogger {
  const out: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      out.push(chunk.toString());
      done();
    },
  });
  const options = opts.bare === true ? { level: opts.level ?? 'info', base: undefined, timestamp: false } : { level: opts.level ?? 'info' };
  return {
    logger: pino(options, stream),
    lines: () =>
      out
        .join('')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    text: () => out.join(''),
  };
}
