import { fromCategoryMessage, fromOutcomeMessage } from '../api/export-messages.js';
import type { ExportCategory, ExportHeader, ExportTrailer, ExportUserResponse } from '../gen/lethe/privacy/v1/privacy.js';
import { type DownstreamOutcome, ExportDocumentAssembler } from '../privacy/export-document.js';

export class IncompleteExportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IncompleteExportError';
  }
}

export interface ReceivedExport {
  readonly header: ExportHeader;
  readonly trailer: ExportTrailer;
  readonly records: number;
  /** Each downstream service's outcome (the trailer's). */
  readonly downstream: readonly DownstreamOutcome[];
  /** A downstream service's part is missing or incomplete. */
  readonly partial: boolean;
}

/** Records the client will receive for these categories (limits applied). */
const expectedRecords = (categories: readonly ExportCategory[]): number =>
  categories.reduce((n, c) => n + (c.limit > 0 ? Math.min(c.limit, c.totalCount) : c.totalCount), 0);

/**
 * Rebuilds the canonical export document from the stream, hands it to `write` chunk by chunk
 * (awaiting it, so a slow disk slows the stream), and checks it against the trailer: every
 * category's count and the SHA-256. Throws IncompleteExportError when anything is missing.
 */
export async function receiveExport(
  stream: AsyncIterable<ExportUserResponse>,
  write: (chunk: string) => Promise<void> | void,
  onProgress?: (received: number, expected: number) => void,
  /** Each downstream service's outcome, as its part ends. */
  onDownstream?: (outcome: DownstreamOutcome) => void,
): Promise<ReceivedExport> {
  let header: ExportHeader | undefined;
  let trailer: ExportTrailer | undefined;
  let doc: ExportDocumentAssembler | undefined;
  let pending: string[] = [];
  let records = 0;
  let expected = 0;
  const flush = async () => {
    if (pending.length === 0) return;
    const chunk = pending.join('');
    pending = [];
    await write(chunk);
  };

  for await (const message of stream) {
    const part = message.part;
    if (part === undefined) throw new IncompleteExportError('the server sent an empty message');
    if (trailer !== undefined) throw new IncompleteExportError('the server sent data after the trailer');
    if (part.$case === 'header') {
      if (header !== undefined) throw new IncompleteExportError('the server sent two headers');
      header = part.value;
      expected = expectedRecords(header.categories);
      doc = new ExportDocumentAssembler(header.categories.map(fromCategoryMessage), (chunk) => pending.push(chunk.toString()), header.downstreamServices);
    } else if (doc === undefined) {
      throw new IncompleteExportError('data arrived before the header');
    } else if (part.$case === 'section') {
      doc.startSection(part.value.service, part.value.categories.map(fromCategoryMessage));
      expected += expectedRecords(part.value.categories);
    } else if (part.$case === 'batch') {
      doc.add(part.value.category, part.value.records, part.value.service);
      records += part.value.records.length;
      await flush();
      onProgress?.(records, expected);
    } else if (part.$case === 'progress') {
      onDownstream?.(fromOutcomeMessage(part.value));
    } else {
      trailer = part.value;
    }
  }

  if (header === undefined || doc === undefined) throw new IncompleteExportError('the stream ended before the header');
  if (trailer === undefined) throw new IncompleteExportError(`the stream ended before the trailer, after ${records} records`);
  const downstream = trailer.downstream.map(fromOutcomeMessage);
  const { sha256, counts } = doc.finish(downstream);
  await flush();
  for (const c of trailer.counts) {
    const got = counts.get(c.category) ?? 0;
    if (got !== c.exported) throw new IncompleteExportError(`category ${c.category}: received ${got} records, the server sent ${c.exported}`);
  }
  if (records !== trailer.totalRecords) throw new IncompleteExportError(`received ${records} records, the server sent ${trailer.totalRecords}`);
  if (sha256 !== trailer.sha256) throw new IncompleteExportError('the document digest does not match the trailer');
  return { header, trailer, records, downstream, partial: trailer.partial };
}
