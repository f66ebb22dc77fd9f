import { Counter, Gauge, Histogram } from 'prom-client';
import { DURATION_BUCKETS, type Registry, createRegistry } from './registry.js';
import { sampleWithTimeout } from './sample-with-timeout.js';

/** How long a scrape waits for the outbox count before reporting it unknown (NaN). */
const OUTBOX_COUNT_TIMEOUT_MS = 2_000;
const DUE_SOON_MS = 7 * 86_400_000;

/** The privacy requests a gRPC method carries out (the ledger's types). */
const REQUEST_TYPE: Readonly<Record<string, 'export' | 'forget'>> = {
  'lethe.privacy.v1.PrivacyService/ExportUser': 'export',
  'lethe.privacy.v1.PrivacyService/StoreExport': 'export',
  'lethe.privacy.v1.PrivacyService/ForgetUser': 'forget',
};

/** Codes that refuse a request (the caller's doing), as opposed to failing it. */
const REFUSALS: ReadonlySet<string> = new Set(['INVALID_ARGUMENT', 'UNAUTHENTICATED', 'PERMISSION_DENIED', 'NOT_FOUND', 'FAILED_PRECONDITION']);

/** `lethe serve`: gRPC calls, privacy requests, exported records and the outbox backlog. */
export class ServerMetrics {
  readonly registry: Registry = createRegistry();
  private readonly calls = new Counter({
    name: 'lethe_grpc_requests_total',
    help: 'gRPC calls handled, by method and status code',
    labelNames: ['method', 'code'] as const,
    registers: [this.registry],
  });
  private readonly callSeconds = new Histogram({
    name: 'lethe_grpc_request_duration_seconds',
    help: 'gRPC call duration until the last response (a stream: until it ends), by method',
    labelNames: ['method'] as const,
    buckets: [...DURATION_BUCKETS],
    registers: [this.registry],
  });
  private readonly requests = new Counter({
    name: 'lethe_privacy_requests_total',
    help: 'Privacy requests by type (export, forget) and outcome (succeeded; refused: the caller may not or asked wrongly; failed)',
    labelNames: ['type', 'outcome'] as const,
    registers: [this.registry],
  });
  private readonly exportRecords = new Counter({
    name: 'lethe_export_records_total',
    help: 'Records exported (ExportUser streams and StoreExport artifacts run by this server)',
    registers: [this.registry],
  });

  private readonly handshakeFailures = new Counter({
    name: 'lethe_tls_handshake_failures_total',
    help: 'TLS handshakes the gRPC listener refused, by reason (no_client_certificate, untrusted_client_certificate, certificate_rejected_by_client, not_tls, protocol_version, aborted, other)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /**
   * `countOpenByDue(now, soon)`: open requests (scheduled, running, waiting for downstream) whose
   * GDPR due date is before `now`, and those due from `now` until before `soon`; read on scrape,
   * like the outbox. Both gauges share one read: a scrape collects every metric at once, so the
   * second finds the first's read in flight.
   */
  constructor(countPendingEvents: () => Promise<number>, countOpenByDue: (now: Date, soon: Date) => Promise<{ overdue: number; dueSoon: number }>) {
    const pending = sampleWithTimeout(countPendingEvents, OUTBOX_COUNT_TIMEOUT_MS);
    const byDue = sampleWithTimeout(() => {
      const now = Date.now();
      return countOpenByDue(new Date(now), new Date(now + DUE_SOON_MS));
    }, OUTBOX_COUNT_TIMEOUT_MS);
    new Gauge({
      name: 'lethe_privacy_requests_overdue',
      help: 'Open privacy requests past their GDPR due date (NaN when the database did not answer in time)',
      registers: [this.registry],
      async collect() {
        this.set((await byDue())?.overdue ?? Number.NaN);
      },
    });
    new Gauge({
      name: 'lethe_privacy_requests_due_within_7d',
      help: 'Open privacy requests not yet overdue whose GDPR due date is within 7 days',
      registers: [this.registry],
      async collect() {
        this.set((await byDue())?.dueSoon ?? Number.NaN);
      },
    });
    new Gauge({
      name: 'lethe_outbox_pending',
      help: 'Anonymization events in the outbox not yet published to NATS (NaN when the database did not answer in time)',
      registers: [this.registry],
      async collect() {
        this.set((await pending()) ?? Number.NaN);
      },
    });
  }

  /** One finished call; `path` is the gRPC method path, `code` the status name (OK, NOT_FOUND, …). */
  observeCall(path: string, code: string, seconds: number): void {
    const method = path.replace(/^\//, '');
    this.calls.inc({ method, code });
    this.callSeconds.observe({ method }, seconds);
    const type = REQUEST_TYPE[method];
    if (type !== undefined) this.requests.inc({ type, outcome: code === 'OK' ? 'succeeded' : REFUSALS.has(code) ? 'refused' : 'failed' });
  }

  tlsHandshakeFailed(reason: string): void {
    this.handshakeFailures.inc({ reason });
  }

  exported(records: number): void {
    if (records > 0) this.exportRecords.inc(records);
  }
}
