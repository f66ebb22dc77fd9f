import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Env } from '../../src/config/config.js';
import { DEFAULT_HEALTH_LISTEN, DEFAULT_STREAM, type SidecarFlags, hashKeyFor, loadSidecarConfig } from '../../src/config/sidecar-config.js';
import { describeNatsUrl } from '../../src/events/nats.js';
import { ConfigError } from '../../src/errors.js';
import { parseDataMap } from '../../src/privacy/data-map.js';

const HASH_KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
const ENV: Env = { DATABASE_URL: 'postgres://orders:s3cret@db.orders:5432/orders', LETHE_NATS_URL: 'nats://nats.messaging:4222' };
const FLAGS: SidecarFlags = { service: 'orders', dataMap: 'maps/orders.yaml' };

function configErrorOf(env: Env, flags: SidecarFlags = FLAGS): ConfigError {
  try {
    loadSidecarConfig(env, flags);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected loadSidecarConfig to throw a ConfigError');
}

describe('loadSidecarConfig: defaults', () => {
  const c = loadSidecarConfig(ENV, FLAGS);

  it('takes the service, data map, database and NATS from the flags and the environment', () => {
    expect(c.service).toBe('orders');
    expect(c.dataMapPath).toBe(resolve('maps/orders.yaml'));
    expect(c.databaseUrl).toBe(ENV.DATABASE_URL);
    expect(c.natsUrl).toBe('nats://nats.messaging:4222');
  });

  it('uses the LETHE_PRIVACY stream, 4 at a time, 5 deliveries, a 30 s ack wait and a 1 s retry base', () => {
    expect(DEFAULT_STREAM).toBe('LETHE_PRIVACY');
    expect(c.stream).toEqual({ name: 'LETHE_PRIVACY', replicas: 1, duplicateWindowMs: 120_000, maxAgeMs: 30 * 86_400_000 });
    expect(c.concurrency).toBe(8);
    expect(c.maxDeliveries).toBe(5);
    expect(c.ackWaitMs).toBe(30_000);
    expect(c.retryBaseMs).toBe(1_000);
  });

  it('serves health on loopback port 8081, logs at info, has no hash key and no failpoint, and is frozen', () => {
    expect(DEFAULT_HEALTH_LISTEN).toBe('127.0.0.1:8081');
    expect(c.healthListen).toEqual({ host: '127.0.0.1', port: 8081 });
    expect(c.logLevel).toBe('info');
    expect(c.hashKey).toBeUndefined();
    expect(c.failpoints.size).toBe(0);
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.stream)).toBe(true);
  });
});

describe('loadSidecarConfig: settings', () => {
  it('reads every setting', () => {
    const c = loadSidecarConfig(
      {
        ...ENV,
        LETHE_NATS_STREAM: 'PRIVACY_EU',
        LETHE_SIDECAR_CONCURRENCY: '64',
        LETHE_SIDECAR_MAX_DELIVERIES: '3',
        LETHE_SIDECAR_ACK_WAIT: '2s',
        LETHE_SIDECAR_RETRY_BASE: '100ms',
        LETHE_HASH_KEY: HASH_KEY,
        LETHE_LOG_LEVEL: 'debug',
        LETHE_FAILPOINTS: ' sidecar-before-ack ,',
      },
      { ...FLAGS, healthListen: '0.0.0.0:9000' },
    );
    expect(c.stream.name).toBe('PRIVACY_EU');
    expect(c.concurrency).toBe(64);
    expect(c.maxDeliveries).toBe(3);
    expect(c.ackWaitMs).toBe(2_000);
    expect(c.retryBaseMs).toBe(100);
    expect(c.deprecations).toEqual([]);
    expect(c.hashKey?.toString('hex')).toBe(HASH_KEY);
    expect(c.logLevel).toBe('debug');
    expect([...c.failpoints]).toEqual(['sidecar-before-ack']);
    expect(c.healthListen).toEqual({ host: '0.0.0.0', port: 9000 });
  });

  it('accepts a tls:// NATS URL and postgresql:// database URL', () => {
    const c = loadSidecarConfig({ DATABASE_URL: 'postgresql://db/orders', LETHE_NATS_URL: 'tls://nats:4222' }, FLAGS);
    expect(c.natsUrl).toBe('tls://nats:4222');
  });

  it('ignores variables it does not know (the service shares its environment)', () => {
    expect(loadSidecarConfig({ ...ENV, PORT: '8080', LETHE_LISTEN: 'nonsense' }, FLAGS).service).toBe('orders');
  });
});

describe('loadSidecarConfig: refusals name the setting', () => {
  it('still reads the old unit-less variables, with a deprecation saying what to write instead', () => {
    const c = loadSidecarConfig({ ...ENV, LETHE_SIDECAR_ACK_WAIT: '2', LETHE_SIDECAR_RETRY_BASE_MS: '100' }, FLAGS);
    expect([c.ackWaitMs, c.retryBaseMs]).toEqual([2_000, 100]);
    expect(c.deprecations).toEqual([
      'LETHE_SIDECAR_ACK_WAIT=2 is deprecated: set LETHE_SIDECAR_ACK_WAIT=2s',
      'LETHE_SIDECAR_RETRY_BASE_MS=100 is deprecated: set LETHE_SIDECAR_RETRY_BASE=100ms',
    ]);
  });

  it.each([
    ['no --service', ENV, { dataMap: 'm.yaml' }, '--service: required: the name of this downstream service (e.g. --service orders)'],
    [
      'a --service that is not a DNS label',
      ENV,
      { ...FLAGS, service: 'Orders_v2' },
      "--service: 'Orders_v2' is not a service name: lowercase letters, digits and -, starting and ending with a letter or digit (at most 63)",
    ],
    [
      'a --service ending in -',
      ENV,
      { ...FLAGS, service: 'orders-' },
      "--service: 'orders-' is not a service name: lowercase letters, digits and -, starting and ending with a letter or digit (at most 63)",
    ],
    ['no --data-map', ENV, { service: 'orders' }, "--data-map: required: the service's data map (a YAML file)"],
    ['a bad --health-listen', ENV, { ...FLAGS, healthListen: '8081' }, "--health-listen: '8081' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)"],
    [
      'no DATABASE_URL',
      { LETHE_NATS_URL: ENV.LETHE_NATS_URL },
      FLAGS,
      "DATABASE_URL: required: the downstream service's own PostgreSQL database (postgres://…)",
    ],
    ['a DATABASE_URL that is not PostgreSQL', { ...ENV, DATABASE_URL: 'mysql://db/orders' }, FLAGS, 'DATABASE_URL: must be a postgres:// or postgresql:// URL'],
    [
      'no LETHE_NATS_URL',
      { DATABASE_URL: ENV.DATABASE_URL },
      FLAGS,
      'LETHE_NATS_URL: required: the NATS server carrying the privacy events (nats://host:4222)',
    ],
    [
      'an http LETHE_NATS_URL',
      { ...ENV, LETHE_NATS_URL: 'http://nats:4222' },
      FLAGS,
      'LETHE_NATS_URL: must be a nats:// (or tls://) URL, for example nats://nats:4222 (comma-separate several servers)',
    ],
    [
      'a bare host as LETHE_NATS_URL',
      { ...ENV, LETHE_NATS_URL: 'nats:4222' },
      FLAGS,
      'LETHE_NATS_URL: must be a nats:// (or tls://) URL, for example nats://nats:4222 (comma-separate several servers)',
    ],
    [
      'a stream name with a dot',
      { ...ENV, LETHE_NATS_STREAM: 'privacy.v1' },
      FLAGS,
      'LETHE_NATS_STREAM: must be a JetStream stream name: letters, digits, _ and -',
    ],
    ['concurrency 0', { ...ENV, LETHE_SIDECAR_CONCURRENCY: '0' }, FLAGS, 'LETHE_SIDECAR_CONCURRENCY: must be a whole number from 1 to 64'],
    ['concurrency 65', { ...ENV, LETHE_SIDECAR_CONCURRENCY: '65' }, FLAGS, 'LETHE_SIDECAR_CONCURRENCY: must be a whole number from 1 to 64'],
    ['concurrency 2.5', { ...ENV, LETHE_SIDECAR_CONCURRENCY: '2.5' }, FLAGS, 'LETHE_SIDECAR_CONCURRENCY: must be a whole number from 1 to 64'],
    ['max deliveries "five"', { ...ENV, LETHE_SIDECAR_MAX_DELIVERIES: 'five' }, FLAGS, 'LETHE_SIDECAR_MAX_DELIVERIES: must be a whole number from 1 to 1000'],
    ['an ack wait of 0 s', { ...ENV, LETHE_SIDECAR_ACK_WAIT: '0' }, FLAGS, 'LETHE_SIDECAR_ACK_WAIT: must be from 1s to 1h'],
    ['an ack wait of two hours', { ...ENV, LETHE_SIDECAR_ACK_WAIT: '2h' }, FLAGS, 'LETHE_SIDECAR_ACK_WAIT: must be from 1s to 1h'],
    [
      'an ack wait without a number',
      { ...ENV, LETHE_SIDECAR_ACK_WAIT: 'soon' },
      FLAGS,
      "LETHE_SIDECAR_ACK_WAIT: 'soon' is not a duration such as 90s, 2m, 24h or 7d",
    ],
    [
      'a negative retry base (old variable)',
      { ...ENV, LETHE_SIDECAR_RETRY_BASE_MS: '-5' },
      FLAGS,
      'LETHE_SIDECAR_RETRY_BASE_MS: must be a whole number of milliseconds; better, set LETHE_SIDECAR_RETRY_BASE to a duration such as 30s',
    ],
    ['a retry base over a minute', { ...ENV, LETHE_SIDECAR_RETRY_BASE: '2m' }, FLAGS, 'LETHE_SIDECAR_RETRY_BASE: must be from 1ms to 60s'],
    ['a short hash key', { ...ENV, LETHE_HASH_KEY: 'abcd' }, FLAGS, 'LETHE_HASH_KEY: must be at least 32 bytes written as hex (openssl rand -hex 32)'],
    ['an unknown log level', { ...ENV, LETHE_LOG_LEVEL: 'verbose' }, FLAGS, 'LETHE_LOG_LEVEL: must be one of trace, debug, info, warn, error, fatal, silent'],
    [
      'an unknown failpoint',
      { ...ENV, LETHE_FAILPOINTS: 'sidecar-before-ack,after-lunch' },
      FLAGS,
      "LETHE_FAILPOINTS: unknown failpoint 'after-lunch' (known: sidecar-before-ack, operator-after-call)",
    ],
  ])('refuses %s', (_label, env, flags, message) => {
    const err = configErrorOf(env, flags);
    expect(err.message).toBe(message);
    expect(message.startsWith(`${err.source}: `)).toBe(true);
  });

  it('never repeats a secret of the database URL in a message', () => {
    const err = configErrorOf({ ...ENV, LETHE_NATS_URL: 'nope' });
    expect(err.message).not.toContain('s3cret');
  });
});

describe('hashKeyFor', () => {
  const hashing = parseDataMap(
    'categories: [{name: orders, table: orders, subject: {column: user_id}, forget: {columns: {customer_name: hash}}}]',
    'orders.yaml',
  );
  const plain = parseDataMap('categories: [{name: views, table: page_views, subject: {column: user_id}, forget: delete}]', 'analytics.yaml');

  it('requires LETHE_HASH_KEY only when the data map hashes a column', () => {
    expect(hashKeyFor({ hashKey: undefined, dataMapPath: '/maps/analytics.yaml' }, plain)).toBeUndefined();
    const key = Buffer.from(HASH_KEY, 'hex');
    expect(hashKeyFor({ hashKey: key, dataMapPath: '/maps/orders.yaml' }, hashing)).toBe(key);
    expect(() => hashKeyFor({ hashKey: undefined, dataMapPath: '/maps/orders.yaml' }, hashing)).toThrow(
      new ConfigError('required: the data map /maps/orders.yaml uses the hash action (openssl rand -hex 32)', 'LETHE_HASH_KEY'),
    );
  });
});

describe('describeNatsUrl', () => {
  it('drops credentials', () => {
    expect(describeNatsUrl('nats://sidecar:s3cret@nats.messaging:4222')).toBe('nats://nats.messaging:4222');
    expect(describeNatsUrl('tls://token@nats:4222')).toBe('tls://nats:4222');
    expect(describeNatsUrl('::')).toBe('nats (unparseable URL)');
  });
});
