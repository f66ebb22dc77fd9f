import { z } from 'zod';
import { ConfigError } from '../errors.js';
import type { Env } from './config.js';

/** Pieces every command's configuration shares. */

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
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
