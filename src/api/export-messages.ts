import { CategoryShape, type DownstreamOutcome as DownstreamOutcomeMessage, DownstreamStatus, type ExportCategory } from '../gen/lethe/privacy/v1/privacy.js';
import type { DocumentCategory, DownstreamOutcome } from '../privacy/export-document.js';
import type { SnapshotCategory } from '../privacy/snapshot-reader.js';

/** The export stream's categories and downstream outcomes, between the engine's shapes and the proto's. */

export function toCategoryMessage(c: SnapshotCategory): ExportCategory {
  return {
    name: c.name,
    documentKey: c.documentKey,
    shape: c.shape === 'object' ? CategoryShape.CATEGORY_SHAPE_OBJECT : CategoryShape.CATEGORY_SHAPE_LIST,
    countKey: c.countKey ?? '',
    totalCount: c.totalCount,
    limit: c.limit,
  };
}

export function fromCategoryMessage(c: ExportCategory): DocumentCategory {
  return {
    name: c.name,
    documentKey: c.documentKey,
    shape: c.shape === CategoryShape.CATEGORY_SHAPE_OBJECT ? 'object' : 'list',
    countKey: c.countKey === '' ? undefined : c.countKey,
    totalCount: c.totalCount,
  };
}

const STATUS_TO_MESSAGE: Record<DownstreamOutcome['status'], DownstreamStatus> = {
  complete: DownstreamStatus.DOWNSTREAM_STATUS_COMPLETE,
  timed_out: DownstreamStatus.DOWNSTREAM_STATUS_TIMED_OUT,
  failed: DownstreamStatus.DOWNSTREAM_STATUS_FAILED,
};

export function toOutcomeMessage(o: DownstreamOutcome): DownstreamOutcomeMessage {
  return { service: o.service, status: STATUS_TO_MESSAGE[o.status], records: o.records, error: o.error ?? '' };
}

export function fromOutcomeMessage(o: DownstreamOutcomeMessage): DownstreamOutcome {
  const status =
    o.status === DownstreamStatus.DOWNSTREAM_STATUS_COMPLETE ? 'complete' : o.status === DownstreamStatus.DOWNSTREAM_STATUS_TIMED_OUT ? 'timed_out' : 'failed';
  return o.error === '' ? { service: o.service, status, records: o.records } : { service: o.service, status, records: o.records, error: o.error };
}
