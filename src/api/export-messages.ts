import { CategoryShape, type DownstreamOutcome as DownstreamOutcomeMessage, DownstreamStatus, type ExportCategory } from '../gen/lethe/privacy/v1/privacy.js';
import type { DocumentCategory, DownstreamOutcome } from '../privacy/export-document.js';
import { type JsonRecords, varintSize, writeVarint } from '../privacy/json-records.js';
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

/**
 * ExportUserResponse{batch: RecordBatch{category, service, records}} made of the batch's framed
 * records, byte for byte what the generated encoder writes for the same message (fields in
 * declaration order; an empty service left out). The header is written in front of the
 * records, in the batch's own buffer: nothing is copied.
 */
export function encodeBatchResponse(category: string, records: JsonRecords, service: string): Buffer {
  const categoryBytes = Buffer.byteLength(category);
  const serviceBytes = Buffer.byteLength(service);
  const inner = 1 + varintSize(categoryBytes) + categoryBytes + (serviceBytes > 0 ? 1 + varintSize(serviceBytes) + serviceBytes : 0) + records.framedBytes;
  const size = 1 + varintSize(inner) + inner - records.framedBytes;
  return records.withHeader(size, (out, start) => {
    let at = start;
    out[at++] = (2 << 3) | 2; // ExportUserResponse.batch
    at = writeVarint(out, at, inner);
    out[at++] = (1 << 3) | 2; // RecordBatch.category
    at = writeVarint(out, at, categoryBytes);
    at += out.write(category, at, 'utf8');
    if (serviceBytes > 0) {
      out[at++] = (3 << 3) | 2; // RecordBatch.service
      at = writeVarint(out, at, serviceBytes);
      out.write(service, at, 'utf8');
    }
  });
}
