import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_DATABASE_TIMEOUTS } from '../../src/store/database.js';
import { DEFAULT_LISTEN, LOCAL_AUDIENCE, LOCAL_ISSUER, loadServerConfig, parseListen } from '../../src/config/config.js';
import { ConfigError } from '../../src/errors.js';
import { DEFAULT_DATA_MAP_PATH } from '../../src/privacy/data-map.js';
import { ARTIFACT_KEY, HASH_KEY, HOME, configErrorOf } from '../support/config-fixture.js';

describe('loadServerConfig: defaults', () => {
  const config = loadServerConfig({ HOME });

  it('listens on loopback port 50051', () => {
    expect(DEFAULT_LISTEN).toBe('127.0.0.1:50051');
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 50051 });
  });

  it('keeps an embedded PGlite database under the data directory', () => {
    expect(config.dataDir).toBe(join(HOME, '.lethe'));
    expect(config.database).toEqual({ kind: 'pglite', dataDir: join(HOME, '.lethe', 'pgdata') });
  });

  it('uses local authentication, the default data map and migrates the identity schema for PGlite', () => {
    expect(config.auth).toEqual({ mode: 'local', issuer: LOCAL_ISSUER, audience: LOCAL_AUDIENCE });
    expect(config.auth).toEqual({ mode: 'local', issuer: 'lethe-local', audience: 'lethe' });
    expect(config.dataMapPath).toBe(DEFAULT_DATA_MAP_PATH);
    expect(config.migrateIdentitySchema).toBe(true);
    expect(config.platformPrincipals.size).toBe(0);
    expect(config.hashKey).toBeUndefined();
    expect(config.logLevel).toBe('info');
    expect(config.demo).toBe(false);
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('takes the data directory from LETHE_DATA_DIR, then --data-dir', () => {
    expect(loadServerConfig({ HOME, LETHE_DATA_DIR: '/var/lib/lethe' }).dataDir).toBe('/var/lib/lethe');
    const flagged = loadServerConfig({ HOME, LETHE_DATA_DIR: '/var/lib/lethe' }, { dataDir: '/srv/lethe' });
    expect(flagged.dataDir).toBe('/srv/lethe');
    expect(flagged.database).toEqual({ kind: 'pglite', dataDir: '/srv/lethe/pgdata' });
  });

  it('takes the listen address from LETHE_LISTEN, then --listen', () => {
    expect(loadServerConfig({ HOME, LETHE_LISTEN: '0.0.0.0:6000' }).listen).toEqual({ host: '0.0.0.0', port: 6000 });
    expect(loadServerConfig({ HOME, LETHE_LISTEN: '0.0.0.0:6000' }, { listen: '[::1]:7000' }).listen).toEqual({ host: '[::1]', port: 7000 });
  });

  it('resolves LETHE_DATA_MAP and reads the other settings', () => {
    const c = loadServerConfig({ HOME, LETHE_DATA_MAP: 'maps/billing.yaml', LETHE_LOG_LEVEL: 'debug', LETHE_HASH_KEY: HASH_KEY }, { demo: true });
    expect(c.dataMapPath).toBe(resolve('maps/billing.yaml'));
    expect(c.logLevel).toBe('debug');
    expect(c.hashKey).toEqual(Buffer.from(HASH_KEY, 'hex'));
    expect(c.hashKey?.length).toBe(32);
    expect(c.demo).toBe(true);
  });
});

describe('loadServerConfig: PostgreSQL', () => {
  it.each(['postgres://lethe@db:5432/lethe', 'postgresql://lethe:pw@db/lethe?sslmode=require'])('DATABASE_URL %s switches to postgres', (url) => {
    const c = loadServerConfig({ HOME, DATABASE_URL: url, LETHE_ARTIFACT_KEY: ARTIFACT_KEY });
    expect(c.database).toEqual({ kind: 'postgres', url, timeouts: DEFAULT_DATABASE_TIMEOUTS });
    expect(c.migrateIdentitySchema).toBe(false);
  });

  it.each([
    ['LETHE_MIGRATE_IDENTITY_SCHEMA=true', { LETHE_MIGRATE_IDENTITY_SCHEMA: 'true' }, {}, true],
    ['LETHE_MIGRATE_IDENTITY_SCHEMA=1', { LETHE_MIGRATE_IDENTITY_SCHEMA: '1' }, {}, true],
    ['LETHE_MIGRATE_IDENTITY_SCHEMA=false', { LETHE_MIGRATE_IDENTITY_SCHEMA: 'false' }, {}, false],
    ['--demo', {}, { demo: true }, true],
  ])('migrates the identity schema on postgres with %s: %s', (_label, extra, flags, migrate) => {
    expect(loadServerConfig({ HOME, DATABASE_URL: 'postgres://db/lethe', LETHE_ARTIFACT_KEY: ARTIFACT_KEY, ...extra }, flags).migrateIdentitySchema).toBe(
      migrate,
    );
  });
});

describe('loadServerConfig: bad values name the variable', () => {
  it.each([
    ['DATABASE_URL', { DATABASE_URL: 'mysql://db/lethe' }, 'DATABASE_URL: must be a postgres:// or postgresql:// URL'],
    ['DATABASE_URL', { DATABASE_URL: 'db:5432' }, 'DATABASE_URL: must be a postgres:// or postgresql:// URL'],
    ['LETHE_LISTEN', { LETHE_LISTEN: 'localhost' }, "LETHE_LISTEN: 'localhost' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)"],
    ['LETHE_LISTEN', { LETHE_LISTEN: '0.0.0.0:70000' }, "LETHE_LISTEN: '0.0.0.0:70000' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)"],
    ['LETHE_LISTEN', { LETHE_LISTEN: ':50051' }, "LETHE_LISTEN: ':50051' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)"],
    ['LETHE_HASH_KEY', { LETHE_HASH_KEY: 'abc' }, 'LETHE_HASH_KEY: must be at least 32 bytes written as hex (openssl rand -hex 32)'],
    ['LETHE_HASH_KEY', { LETHE_HASH_KEY: HASH_KEY.slice(2) }, 'LETHE_HASH_KEY: must be at least 32 bytes written as hex (openssl rand -hex 32)'],
    ['LETHE_HASH_KEY', { LETHE_HASH_KEY: `${HASH_KEY.slice(1)}g` }, 'LETHE_HASH_KEY: must be at least 32 bytes written as hex (openssl rand -hex 32)'],
    ['LETHE_LOG_LEVEL', { LETHE_LOG_LEVEL: 'verbose' }, 'LETHE_LOG_LEVEL: must be one of trace, debug, info, warn, error, fatal, silent'],
    ['LETHE_MIGRATE_IDENTITY_SCHEMA', { LETHE_MIGRATE_IDENTITY_SCHEMA: 'yes' }, 'LETHE_MIGRATE_IDENTITY_SCHEMA: must be true or false'],
    ['LETHE_METRICS_LISTEN', { LETHE_METRICS_LISTEN: '9090' }, "LETHE_METRICS_LISTEN: '9090' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)"],
    [
      'LETHE_METRICS_LISTEN',
      { LETHE_METRICS_LISTEN: 'http://0.0.0.0:9090/metrics' },
      "LETHE_METRICS_LISTEN: 'http://0.0.0.0:9090/metrics' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)",
    ],
  ])('%s: %j', (variable, env, message) => {
    const err = configErrorOf({ HOME, ...env });
    expect(err.name).toBe('ConfigError');
    expect(err.source).toBe(variable);
    expect(err.message).toBe(message);
  });

  it('names --listen when the flag is bad', () => {
    const err = configErrorOf({ HOME }, { listen: 'nope' });
    expect(err.source).toBe('--listen');
    expect(err.message).toBe("--listen: 'nope' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)");
  });

  it('refuses a hash key with an odd number of hex digits instead of silently dropping the last one', () => {
    const err = configErrorOf({ HOME, LETHE_HASH_KEY: `${HASH_KEY}a` });
    expect(err.source).toBe('LETHE_HASH_KEY');
  });
});

describe('loadServerConfig: gRPC limits and database timeouts', () => {
  it('has documented defaults', () => {
    const c = loadServerConfig({ HOME, DATABASE_URL: 'postgres://db/lethe', LETHE_ARTIFACT_KEY: ARTIFACT_KEY });
    expect(c.grpc).toEqual({
      maxReceiveMessageBytes: 16 * 1024,
      maxSendMessageBytes: 16 * 1024 * 1024,
      maxConcurrentStreams: 100,
      keepaliveTimeMs: 120_000,
      keepaliveTimeoutMs: 20_000,
      maxConnectionIdleMs: 900_000,
      maxConnectionAgeMs: 1_800_000,
      maxConnectionAgeGraceMs: 300_000,
    });
    expect(c.database).toMatchObject({
      timeouts: {
        statementTimeoutMs: 20_000,
        lockTimeoutMs: 10_000,
        idleInTransactionTimeoutMs: 300_000,
        queryTimeoutMs: 25_000,
        connectTimeoutMs: 5_000,
        acquireTimeoutMs: 10_000,
        healthIntervalMs: 5_000,
        healthTimeoutMs: 3_000,
      },
    });
  });

  it('reads sizes and durations with units', () => {
    const c = loadServerConfig({
      HOME,
      DATABASE_URL: 'postgres://db/lethe',
      LETHE_ARTIFACT_KEY: ARTIFACT_KEY,
      LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE: '64KiB',
      LETHE_GRPC_MAX_SEND_MESSAGE_SIZE: '4MiB',
      LETHE_GRPC_MAX_CONCURRENT_STREAMS: '10',
      LETHE_DB_STATEMENT_TIMEOUT: '2s',
      LETHE_DB_QUERY_TIMEOUT: '2500ms',
      LETHE_DB_HEALTH_INTERVAL: '1s',
    });
    expect(c.grpc).toMatchObject({ maxReceiveMessageBytes: 65_536, maxSendMessageBytes: 4 * 1024 * 1024, maxConcurrentStreams: 10 });
    expect(c.database).toMatchObject({ timeouts: { statementTimeoutMs: 2_000, queryTimeoutMs: 2_500, healthIntervalMs: 1_000 } });
  });

  it.each([
    ['LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE', '1GiB', "LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE: '1GiB' is not a size such as 512B, 64KiB or 4MiB"],
    ['LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE', '100MiB', 'LETHE_GRPC_MAX_RECEIVE_MESSAGE_SIZE: must be from 4KiB to 64MiB'],
    ['LETHE_GRPC_MAX_CONCURRENT_STREAMS', '0', 'LETHE_GRPC_MAX_CONCURRENT_STREAMS: must be a whole number from 1 to 10000'],
    ['LETHE_GRPC_KEEPALIVE_TIME', '1s', 'LETHE_GRPC_KEEPALIVE_TIME: must be from 10s to 24h'],
    ['LETHE_DB_STATEMENT_TIMEOUT', '30', "LETHE_DB_STATEMENT_TIMEOUT: '30' is not a duration such as 90s, 2m, 24h or 7d"],
    ['LETHE_DB_QUERY_TIMEOUT', '20s', 'LETHE_DB_QUERY_TIMEOUT: must be longer than LETHE_DB_STATEMENT_TIMEOUT'],
    ['LETHE_DB_ACQUIRE_TIMEOUT', '1s', 'LETHE_DB_ACQUIRE_TIMEOUT: must be at least LETHE_DB_CONNECT_TIMEOUT'],
  ])('%s=%s is refused, naming the setting', (name, value, message) => {
    expect(() => loadServerConfig({ HOME, [name]: value })).toThrow(message);
  });
});

describe('loadServerConfig: LETHE_METRICS_LISTEN', () => {
  it('is off by default: the server opens no HTTP listener', () => {
    expect(loadServerConfig({ HOME }).metricsListen).toBeUndefined();
    expect(loadServerConfig({ HOME, LETHE_METRICS_LISTEN: '' }).metricsListen).toBeUndefined();
  });

  it('takes the address of /metrics, IPv4 or IPv6', () => {
    expect(loadServerConfig({ HOME, LETHE_METRICS_LISTEN: '0.0.0.0:9090' }).metricsListen).toEqual({ host: '0.0.0.0', port: 9090 });
    expect(loadServerConfig({ HOME, LETHE_METRICS_LISTEN: '[::1]:0' }).metricsListen).toEqual({ host: '[::1]', port: 0 });
  });
});

describe('loadServerConfig: export artifacts', () => {
  it('defaults: a key generated in the data directory, kept 7 days, swept every minute', () => {
    expect(loadServerConfig({ HOME }).artifacts).toEqual({ key: undefined, ttlMs: 7 * 86_400_000, sweepIntervalMs: 60_000 });
  });

  it('reads the key, the TTL and the sweep interval', () => {
    const c = loadServerConfig({ HOME, LETHE_ARTIFACT_KEY: ARTIFACT_KEY, LETHE_ARTIFACT_TTL: '36h', LETHE_ARTIFACT_SWEEP_INTERVAL: '5s' });
    expect(c.artifacts.key).toEqual(Buffer.from(ARTIFACT_KEY, 'hex'));
    expect(c.artifacts.key?.length).toBe(32);
    expect(c.artifacts.ttlMs).toBe(36 * 3_600_000);
    expect(c.artifacts.sweepIntervalMs).toBe(5_000);
    expect(loadServerConfig({ HOME, LETHE_ARTIFACT_TTL: '1m' }).artifacts.ttlMs).toBe(60_000);
    expect(loadServerConfig({ HOME, LETHE_ARTIFACT_KEY: ARTIFACT_KEY.toUpperCase() }).artifacts.key).toEqual(Buffer.from(ARTIFACT_KEY, 'hex'));
  });

  it('requires LETHE_ARTIFACT_KEY with DATABASE_URL: replicas must not each make up a key', () => {
    const err = configErrorOf({ HOME, DATABASE_URL: 'postgres://db/lethe' });
    expect(err.source).toBe('LETHE_ARTIFACT_KEY');
    expect(err.message).toBe(
      'LETHE_ARTIFACT_KEY: required with DATABASE_URL: the key export artifacts are encrypted with, the same for every replica (openssl rand -hex 32)',
    );
  });

  const KEY_RULE = 'LETHE_ARTIFACT_KEY: must be exactly 32 bytes written as 64 hex digits (openssl rand -hex 32)';
  it.each([
    ['LETHE_ARTIFACT_KEY', { LETHE_ARTIFACT_KEY: ARTIFACT_KEY.slice(2) }, KEY_RULE],
    ['LETHE_ARTIFACT_KEY', { LETHE_ARTIFACT_KEY: `${ARTIFACT_KEY}00` }, KEY_RULE],
    ['LETHE_ARTIFACT_KEY', { LETHE_ARTIFACT_KEY: `${ARTIFACT_KEY.slice(1)}g` }, KEY_RULE],
    ['LETHE_ARTIFACT_KEY', { LETHE_ARTIFACT_KEY: '' }, KEY_RULE],
    ['LETHE_ARTIFACT_TTL', { LETHE_ARTIFACT_TTL: 'a week' }, "LETHE_ARTIFACT_TTL: 'a week' is not a duration such as 90s, 2m, 24h or 7d"],
    ['LETHE_ARTIFACT_TTL', { LETHE_ARTIFACT_TTL: '9s' }, 'LETHE_ARTIFACT_TTL: must be at least 10s'],
    ['LETHE_ARTIFACT_SWEEP_INTERVAL', { LETHE_ARTIFACT_SWEEP_INTERVAL: '500ms' }, 'LETHE_ARTIFACT_SWEEP_INTERVAL: must be at least 1s'],
    [
      'LETHE_ARTIFACT_SWEEP_INTERVAL',
      { LETHE_ARTIFACT_SWEEP_INTERVAL: 'often' },
      "LETHE_ARTIFACT_SWEEP_INTERVAL: 'often' is not a duration such as 90s, 2m, 24h or 7d",
    ],
  ])('%s: %j', (variable, env, message) => {
    const err = configErrorOf({ HOME, ...env });
    expect(err.source).toBe(variable);
    expect(err.message).toBe(message);
  });
});

describe('parseListen', () => {
  it.each([
    ['127.0.0.1:50051', { host: '127.0.0.1', port: 50051 }],
    ['[::]:443', { host: '[::]', port: 443 }],
    ['lethe.svc.cluster.local:8080', { host: 'lethe.svc.cluster.local', port: 8080 }],
    ['0.0.0.0:65535', { host: '0.0.0.0', port: 65535 }],
  ])('%s', (value, address) => {
    expect(parseListen(value, 'LETHE_LISTEN')).toEqual(address);
  });

  it.each(['127.0.0.1', '127.0.0.1:65536', '::1:50051', 'host:port', 'a b:1'])('refuses %s', (value) => {
    expect(() => parseListen(value, 'LETHE_LISTEN')).toThrow(
      new ConfigError(`'${value}' is not HOST:PORT (for example 127.0.0.1:50051 or [::1]:50051)`, 'LETHE_LISTEN'),
    );
  });
});
