import { describe, expect, it } from 'vitest';
import { parsePurgedEvent, purgedEventFor } from '../../src/events/cloudevents.js';
import { UnavailableError } from '../../src/errors.js';
import { failedReceipt, purgedReceipt, receiptMsgId, receiptSource, safeErrorSummary } from '../../src/sidecar/receipts.js';

const REQUEST = '1b4e28ba-2fa1-41d2-883f-0016d3cca427';

/** What node-postgres throws for a failed statement: the message quotes the row. */
function pgError(code: string, message: string): Error {
  const err = new Error(message) as Error & { code: string };
  err.name = 'error';
  err.code = code;
  return err;
}

describe('receipts', () => {
  it('a purged receipt lists tables and row counts and validates as a purged CloudEvent', () => {
    const r = purgedReceipt({
      service: 'orders',
      userId: 'user-42',
      requestId: REQUEST,
      purgedAt: new Date('2026-11-02T10:00:00.000Z'),
      rowsAffected: [
        { table: 'shipping_addresses', action: 'delete', rows: 3 },
        { table: 'orders', action: 'update', rows: 2 },
      ],
    });
    expect(r).toEqual({
      user_id: 'user-42',
      request_id: REQUEST,
      service: 'orders',
      status: 'purged',
      purged_at: '2026-11-02T10:00:00.000Z',
      rows_affected: [
        { table: 'shipping_addresses', action: 'delete', rows: 3 },
        { table: 'orders', action: 'update', rows: 2 },
      ],
    });
    const event = purgedEventFor(receiptSource('orders'), r);
    expect(parsePurgedEvent(Buffer.from(JSON.stringify(event)))).toEqual(event);
    expect(event.source).toBe('/lethe/sidecar/orders');
  });

  it('a failed receipt says how many deliveries failed and the kind of error, never its message', () => {
    const err = pgError('P0001', 'legal hold on order 7 for jane.doe@example.com');
    const r = failedReceipt({
      service: 'orders',
      userId: 'user-42',
      requestId: REQUEST,
      failedAt: new Date('2026-11-02T10:00:00.000Z'),
      deliveries: 3,
      error: err,
    });
    expect(r).toEqual({
      user_id: 'user-42',
      request_id: REQUEST,
      service: 'orders',
      status: 'failed',
      purged_at: '2026-11-02T10:00:00.000Z',
      rows_affected: [],
      error: 'purge failed after 3 deliveries: SQLSTATE P0001',
    });
    expect(parsePurgedEvent(Buffer.from(JSON.stringify(purgedEventFor(receiptSource('orders'), r))))?.data.status).toBe('failed');
    expect(failedReceipt({ service: 'orders', userId: 'u', requestId: REQUEST, failedAt: new Date(), deliveries: 1, error: err }).error).toBe(
      'purge failed after 1 delivery: SQLSTATE P0001',
    );
  });

  it('one message id per service, request and outcome, so a repeated receipt is deduplicated', () => {
    expect(receiptMsgId('orders', REQUEST, 'purged')).toBe(`receipt:orders:${REQUEST}:purged`);
    expect(receiptMsgId('orders', REQUEST, 'failed')).toBe(`receipt:orders:${REQUEST}:failed`);
  });
});

describe('safeErrorSummary', () => {
  it.each([
    [
      'a constraint violation',
      pgError('23514', 'new row for relation "orders" violates check constraint; Failing row contains (jane@example.com)'),
      'SQLSTATE 23514',
    ],
    ['a refused privilege', pgError('42501', 'permission denied for table orders'), 'SQLSTATE 42501'],
    ['a lost connection', pgError('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.7:5432'), 'database unavailable'],
    ['an unavailable database', new UnavailableError('The database is unavailable; retry later'), 'database unavailable'],
    ['a NATS timeout', Object.assign(new Error('timeout'), { name: 'TimeoutError' }), 'TimeoutError'],
    ['an error with a code that is not an SQLSTATE', Object.assign(new Error('x'), { name: 'JetStreamApiError', code: '503' }), 'JetStreamApiError (503)'],
    ['a thrown string', 'jane@example.com is on legal hold', 'string'],
    ['an error whose name is not an identifier', Object.assign(new Error('x'), { name: 'jane@example.com' }), 'error'],
  ])('%s', (_label, err, summary) => {
    expect(safeErrorSummary(err)).toBe(summary);
  });
});
