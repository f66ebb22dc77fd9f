import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { logNatsStatus } from '../../src/events/nats.js';

describe('NATS client status as JSON log lines', () => {
  it('logs connection changes and errors through the logger, by class and code, never the message', () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino(
      { base: undefined, timestamp: false },
      new Writable({
        write(chunk: Buffer, _e, cb) {
          lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
          cb();
        },
      }),
    );
    const error = Object.assign(new Error('\'Permissions Violation for Publish to "privacy.v1.user.purged.orders"\' user-id-123'), {
      name: 'PermissionViolationError',
      code: 'PERMISSIONS_VIOLATION',
    });
    logNatsStatus(logger, { type: 'disconnect', server: '127.0.0.1:4222' });
    logNatsStatus(logger, { type: 'error', error });
    logNatsStatus(logger, { type: 'staleConnection' });
    logNatsStatus(logger, { type: 'ping', pendingPings: 1 });
    expect(lines).toEqual([
      { level: 30, nats: 'disconnect', msg: 'nats connection' },
      { level: 40, nats: 'error', err: { type: 'PermissionViolationError', code: 'PERMISSIONS_VIOLATION' }, msg: 'nats error' },
      { level: 40, nats: 'staleConnection', msg: 'nats connection' },
    ]);
    expect(JSON.stringify(lines)).not.toContain('user-id-123');
  });
});
