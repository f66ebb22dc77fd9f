import { z } from 'zod';
import { ConfigError } from '../errors.js';

/** Pieces every command's configuration shares. */

/** The environment a configuration is read from (process.env, or a test's own). */
export type Env = Readonly<Record<string, string | undefined>>;

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** `127.0.0.1:50051`, `[::1]:50051`, `0.0.0.0:8080` → host and port; `source` names the setting in the error. */
export function parseListen(value: string, source: string): ListenAddress {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`'${value}' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)`, source);
  return { host: m[1] ?? '', port };
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const logLevel = z.enum(LOG_LEVELS, { message: `must be one of ${LOG_LEVELS.join(', ')}` }).default('info');

/** The key of the data map's `hash` action: at least 32 bytes, as hex. */
export const hashKey = z
  .string()
  .regex(/^(?:[0-9a-fA-F]{2}){32,}$/, 'must be at least 32 bytes written as hex (openssl rand -hex 32)')
  .optional();

/** An optional whole number from the environment, within bounds. */
export const wholeNumber = (min: number, max: number, fallback: number, unit = '') =>
  z
    .string()
    .regex(/^\d+$/, `must be a whole number from ${min} to ${max}${unit}`)
    .transform(Number)
    .refine((n) => n >= min && n <= max, `must be a whole number from ${min} to ${max}${unit}`)
    .optional()
    .transform((n) => n ?? fallback);

export const flag = z
  .enum(['true', 'false', '1', '0', ''], { message: 'must be true or false' })
  .optional()
  .transform((v) => (v === undefined || v === '' ? undefined : v === 'true' || v === '1'));

/** Parses the environment with `schema`; the first problem becomes a ConfigError naming the variable. */
export function parseEnv<S extends z.ZodType>(schema: S, env: Env): z.output<S> {
  const parsed = schema.safeParse(env);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  throw new ConfigError(issue?.message ?? 'invalid', String(issue?.path[0] ?? 'environment'));
}

export function commaList(value: string | undefined): string[] {
  return [
    ...new Set(
      (value ?? '')
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0),
    ),
  ];
}

const DURATION = /^(\d+)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `90s`, `2m`, `24h`, `7d` → milliseconds. */
export function parseDuration(value: string, source: string): number {
  const m = DURATION.exec(value.trim());
  if (m === null) throw new ConfigError(`'${value}' is not a duration such as 90s, 2m, 24h or 7d`, source);
  return Number(m[1]) * (UNIT_MS[m[2] ?? 's'] ?? 1_000);
}

/** A duration within bounds (inclusive), e.g. a timeout. */
export function boundedDuration(value: string, source: string, min: string, max: string): number {
  const ms = parseDuration(value, source);
  if (ms < parseDuration(min, source) || ms > parseDuration(max, source)) throw new ConfigError(`must be from ${min} to ${max}`, source);
  return ms;
}

const SIZE = /^(\d+)(B|KiB|MiB)$/;
const UNIT_BYTES: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 * 1024 };

/** `512B`, `64KiB`, `4MiB` → bytes, within bounds (inclusive). */
export function parseSize(value: string, source: string, min: string, max: string): number {
  const parse = (v: string) => {
    const m = SIZE.exec(v.trim());
    if (m === null) throw new ConfigError(`'${v}' is not a size such as 512B, 64KiB or 4MiB`, source);
    return Number(m[1]) * (UNIT_BYTES[m[2] ?? 'B'] ?? 1);
  };
  const bytes = parse(value);
  if (bytes < parse(min) || bytes > parse(max)) throw new ConfigError(`must be from ${min} to ${max}`, source);
  return bytes;
}

/** The privacy stream's defaults, the same for the server and every sidecar. */
export const DEFAULT_STREAM = 'LETHE_PRIVACY';
export const STREAM_DUPLICATE_WINDOW_DEFAULT = '2m';
/** Default age limit of the privacy stream's messages (LETHE_NATS_MAX_AGE). */
export const STREAM_MAX_AGE_DEFAULT = '30d';

export const streamName = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,255}$/, 'must be a JetStream stream name: letters, digits, _ and -')
  .default(DEFAULT_STREAM);

/** LETHE_NATS_MAX_AGE: JetStream refuses an age limit shorter than the duplicate window. */
export function streamMaxAge(value: string, duplicateWindowMs: number): number {
  const ms = parseDuration(value, 'LETHE_NATS_MAX_AGE');
  if (ms < duplicateWindowMs) throw new ConfigError(`must be at least the duplicate window (${duplicateWindowMs / 1000}s)`, 'LETHE_NATS_MAX_AGE');
  return ms;
}

export const NATS_URL_RULE = 'must be a nats:// (or tls://) URL, for example nats://nats:4222 (comma-separate several servers)';

/** nats://host:4222, tls://host:4222, or several of them separated by commas. */
export function isNatsUrl(value: string): boolean {
  return value.split(',').every((one) => {
    try {
      const u = new URL(one.trim());
      return (u.protocol === 'nats:' || u.protocol === 'tls:') && u.hostname !== '';
    } catch {
      return false;
    }
  });
}
