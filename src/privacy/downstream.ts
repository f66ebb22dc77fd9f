import type { DownstreamOutcome } from './export-document.js';
import type { SnapshotCategory } from './snapshot-reader.js';

export type { DownstreamOutcome } from './export-document.js';

/** What a downstream service's part of an export yields: its section, its batches, then its outcome. */
export type DownstreamExportEvent =
  | { readonly kind: 'section'; readonly service: string; readonly categories: readonly SnapshotCategory[] }
  | { readonly kind: 'batch'; readonly service: string; readonly category: string; readonly records: string[] }
  | { readonly kind: 'outcome'; readonly outcome: DownstreamOutcome };

/**
 * Where the engine gets downstream services' copies of a subject's data (the NATS sidecars, in
 * src/events/downstream-exports.ts). Each call ends with exactly one outcome, within the
 * source's timeout, whatever the service does.
 */
export interface DownstreamExportSource {
  exportFrom(service: string, request: { subjectId: string; requestId: string }, signal: AbortSignal): AsyncGenerator<DownstreamExportEvent>;
}

/** Downstream services that cannot be asked (no NATS, no signing key): each export says why. */
export class UnaskedDownstream implements DownstreamExportSource {
  constructor(private readonly reason: string) {}

  async *exportFrom(service: string): AsyncGenerator<DownstreamExportEvent> {
    yield { kind: 'outcome', outcome: { service, status: 'failed', records: 0, error: this.reason } };
  }
}
