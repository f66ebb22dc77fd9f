import { describe, expect, it } from 'vitest';
import { dueDate } from '../../src/privacy/due-date.js';

describe('dueDate: one calendar month after receipt (GDPR Art. 12(3))', () => {
  it.each([
    ['2024-06-15T10:00:00.000Z', '2024-07-15T10:00:00.000Z'],
    ['2023-01-31T12:00:00.000Z', '2023-02-28T12:00:00.000Z'],
    ['2024-01-31T12:00:00.000Z', '2024-02-29T12:00:00.000Z'],
    ['2100-01-31T12:00:00.000Z', '2100-02-28T12:00:00.000Z'],
    ['2000-01-31T12:00:00.000Z', '2000-02-29T12:00:00.000Z'],
    ['2024-01-29T08:00:00.000Z', '2024-02-29T08:00:00.000Z'],
    ['2023-01-29T08:00:00.000Z', '2023-02-28T08:00:00.000Z'],
    ['2024-02-29T09:30:00.000Z', '2024-03-29T09:30:00.000Z'],
    ['2024-03-31T00:00:00.000Z', '2024-04-30T00:00:00.000Z'],
    ['2024-08-31T06:00:00.000Z', '2024-09-30T06:00:00.000Z'],
    ['2024-12-15T10:00:00.000Z', '2025-01-15T10:00:00.000Z'],
    ['2024-12-31T23:59:59.999Z', '2025-01-31T23:59:59.999Z'],
    ['2024-11-30T00:00:00.000Z', '2024-12-30T00:00:00.000Z'],
  ])('%s → %s', (received, due) => {
    expect(dueDate(new Date(received)).toISOString()).toBe(due);
  });

  it('keeps the UTC time of day to the millisecond', () => {
    const received = new Date('2024-01-31T23:59:59.987Z');
    const due = dueDate(received);
    expect([due.getUTCHours(), due.getUTCMinutes(), due.getUTCSeconds(), due.getUTCMilliseconds()]).toEqual([23, 59, 59, 987]);
    expect(due.toISOString()).toBe('2024-02-29T23:59:59.987Z');
  });

  it('does not change the date it was given', () => {
    const received = new Date('2024-01-31T12:00:00.000Z');
    dueDate(received);
    expect(received.toISOString()).toBe('2024-01-31T12:00:00.000Z');
  });
});
