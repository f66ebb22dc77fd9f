import { describe, expect, it } from 'vitest';
import { capturingLogger } from '../support/logs.js';
import { logNatsStatus } from '../../src/events/nats.js';

describe('NATS client status as JSON log lines', () => {
  it('logs connection changes and errors through the logger, by class and code, never the message', () => {
    const { logger, lines } = capturingLogger({ bare: true });
    const error = Object.assign(new Error('\'Permissions Violation for Publish to "privacy.v1.user.purged.orders"\' user-id-123'), {
      name: 'PermissionViolationError',
      code: 'PERMISSIONS_VIOLATION',
    });
    logNatsStatus(logger, { type: 'disconnect', server: '127.0.0.1:4222' });
    logNatsStatus(logger, { type: 'error', error });
    logNatsStatus(logger, { type: 'staleConnection' });
    logNatsStatus(logger, { type: 'ping', pendingPings: 1 });
    expect(lines()).toEqual([
      { level: 30, nats: 'disconnect', msg: 'nats connection' },
      { level: 40, nats: 'error', err: { type: 'PermissionViolationError', code: 'PERMISSIONS_VIOLATION' }, msg: 'nats error' },
      { level: 40, nats: 'staleConnection', msg: 'nats connection' },
    ]);
    expect(JSON.stringify(lines())).not.toContain('user-id-123');
  });
});
