/**
 * GDPR Art. 12(3): answer "within one month of receipt". One calendar month later, on the same
 * day of the month at the same UTC time, or the month's last day when it has no such day
 * (31 January → 28 or 29 February).
 */
/** A new request's receipt and due dates, as the ledger records them. */
export function received(at: Date): { receivedAt: Date; dueAt: Date } {
  return { receivedAt: at, dueAt: dueDate(at) };
}

export function dueDate(receivedAt: Date, months = 1): Date {
  const y = receivedAt.getUTCFullYear();
  const m = receivedAt.getUTCMonth();
  const d = receivedAt.getUTCDate();
  const lastDayOfThatMonth = new Date(Date.UTC(y, m + months + 1, 0)).getUTCDate();
  const due = new Date(receivedAt.getTime());
  due.setUTCDate(1);
  due.setUTCMonth(m + months);
  due.setUTCDate(Math.min(d, lastDayOfThatMonth));
  return due;
}
