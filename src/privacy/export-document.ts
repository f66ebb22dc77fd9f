import { createHash, type Hash } from 'node:crypto';
import { JsonRecords } from './json-records.js';

/**
 * The canonical export document, assembled from the stream's header, sections and batches. The
 * server hashes it as it streams; a client rebuilds the same bytes and compares the trailer's
 * SHA-256.
 *
 * The rule: `{`, then for each category in header order, joined by `,`:
 *  - shape "object": the members of its single record (the record without its braces);
 *  - shape "list": `"<count_key>":<total_count>,` when a count key is set, then
 *    `"<document_key>":[` + the records joined by `,` + `]`.
 * When downstream services were asked (the header lists them): `"downstream":{` + for each
 * service in header order `"<service>":{` + its section's categories by the same rule (none when
 * it sent no section) + `}`, joined by `,` + `}`, then `"downstream_export":` + the services'
 * outcomes (`downstreamExportMember`). Then `}`. Records are the JSON texts exactly as streamed.
 */

export interface DocumentCategory {
  readonly name: string;
  readonly documentKey: string;
  readonly shape: 'object' | 'list';
  readonly countKey?: string | undefined;
  readonly totalCount: number;
}

/** What became of one downstream service's part of an export. */
export interface DownstreamOutcome {
  readonly service: string;
  readonly status: 'complete' | 'timed_out' | 'failed';
  /** Records it sent (all of them when complete). */
  readonly records: number;
  /** Why it is not complete; never any of the data. */
  readonly error?: string | undefined;
}

/** The export stream's events as far as the document is concerned (ExportEvent fits). */
export type DocumentEvent =
  | { readonly kind: 'section'; readonly service: string; readonly categories: readonly DocumentCategory[] }
  | { readonly kind: 'batch'; readonly category: string; readonly records: Records; readonly service?: string | undefined }
  | { readonly kind: 'trailer'; readonly downstream: readonly DownstreamOutcome[] }
  | { readonly kind: 'header' | 'progress' };

/** A batch's records: as the server renders them, or as strings (a client's, a downstream service's). */
export type Records = JsonRecords | readonly string[];

/** A piece of the document's text. */
export type DocumentText = string | Buffer;

/** A piece of the document's text as UTF-8 bytes. */
export const documentBytes = (text: DocumentText): Buffer => (typeof text === 'string' ? Buffer.from(text, 'utf8') : text);

export interface AssembledDocument {
  readonly sha256: string;
  /** Records per category of the server's own data map. */
  readonly counts: ReadonlyMap<string, number>;
}

export class ExportDocumentAssembler {
  private readonly hash: Hash = createHash('sha256');
  private readonly top: ObjectWriter;
  private section: { readonly service: string; readonly writer: CategoryWriter } | undefined;
  private readonly own: CategoryWriter;
  /** The members of `"downstream":{…}`: one per service. */
  private readonly sectionMembers = new ObjectWriter((t) => this.emit(t));
  private downstreamOpen = false;
  private nextService = 0;
  private result: AssembledDocument | undefined;

  constructor(
    categories: readonly DocumentCategory[],
    private readonly sink?: (chunk: DocumentText) => void,
    /** The downstream services asked, in document order (the header's). */
    private readonly services: readonly string[] = [],
  ) {
    this.emit('{');
    this.top = new ObjectWriter((t) => this.emit(t));
    this.own = new CategoryWriter(categories, this.top, this.textOf);
  }

  /** Appends a batch; batches of one category must be contiguous and in header order. */
  add(category: string, records: Records, service?: string): void {
    this.assertOpen();
    if (service === undefined || service === '') {
      if (this.nextService > 0) throw new Error(`record batch for category '${category}' after the downstream sections began`);
      this.own.add(category, records);
      return;
    }
    if (this.section?.service !== service) throw new Error(`record batch for service '${service}', whose section is not the current one`);
    this.section.writer.add(category, records);
  }

  /** Opens a downstream service's section (services in header order; one section each at most). */
  startSection(service: string, categories: readonly DocumentCategory[]): void {
    this.assertOpen();
    const at = this.services.indexOf(service, this.nextService);
    if (at < 0) throw new Error(`section for service '${service}', which the header did not announce or which came out of order`);
    this.openDownstream();
    this.skipTo(at);
    const obj = this.sectionObject(service);
    this.section = { service, writer: new CategoryWriter(categories, obj, this.textOf) };
    this.nextService = at + 1;
  }

  /** Feeds one event of the stream; the trailer closes the document and returns what finish() does. */
  apply(e: DocumentEvent): AssembledDocument | undefined {
    if (e.kind === 'section') this.startSection(e.service, e.categories);
    else if (e.kind === 'batch') this.add(e.category, e.records, e.service);
    else if (e.kind === 'trailer') return this.finish(e.downstream);
    return undefined;
  }

  /** Closes the document; returns the hex SHA-256 and the records per category. */
  finish(outcomes: readonly DownstreamOutcome[] = []): AssembledDocument {
    if (this.result === undefined) {
      this.own.close();
      if (this.services.length > 0) {
        this.openDownstream();
        this.skipTo(this.services.length);
        this.emit('}');
        this.top.member(`"downstream_export":${downstreamExportMember(this.services, outcomes)}`);
      }
      this.emit('}');
      this.result = { sha256: this.hash.digest('hex'), counts: this.own.counts };
    }
    return this.result;
  }

  private openDownstream(): void {
    if (this.downstreamOpen) return;
    this.own.close();
    this.top.member('"downstream":{');
    this.downstreamOpen = true;
  }

  /** Closes the current section, and writes `{}` for each service before `index` that sent none. */
  private skipTo(index: number): void {
    this.closeSection();
    while (this.nextService < index) {
      const service = this.services[this.nextService];
      if (service !== undefined) {
        this.sectionObject(service);
        this.emit('}');
      }
      this.nextService++;
    }
  }

  private sectionObject(service: string): ObjectWriter {
    this.sectionMembers.member(`${JSON.stringify(service)}:{`);
    return new ObjectWriter((t) => this.emit(t));
  }

  private closeSection(): void {
    if (this.section === undefined) return;
    this.section.writer.close();
    this.emit('}');
    this.section = undefined;
  }

  private assertOpen(): void {
    if (this.result !== undefined) throw new Error('export document already finished');
  }

  /**
   * Without a sink the text is only hashed, at once: it is joined in a buffer used again for
   * every batch. A sink may keep what it is given, so it gets a buffer of its own.
   */
  private readonly textOf = (records: JsonRecords): Buffer => {
    if (this.sink !== undefined) return records.joined();
    const text = records.joinInto(this.scratch);
    if (text.buffer !== this.scratch.buffer) this.scratch = Buffer.allocUnsafeSlow(text.length * 2);
    return text;
  };
  private scratch = Buffer.alloc(0);

  private emit(chunk: DocumentText): void {
    this.hash.update(chunk);
    this.sink?.(chunk);
  }
}

/** `{"<service>":{"status":…,"records":…[,"error":…]},…}` for the services in header order. */
function downstreamExportMember(services: readonly string[], outcomes: readonly DownstreamOutcome[]): string {
  const byService = new Map(outcomes.map((o) => [o.service, o]));
  const parts = services.map((service) => {
    const o = byService.get(service) ?? { service, status: 'failed' as const, records: 0, error: 'no outcome was recorded' };
    const body = o.error === undefined || o.error === '' ? { status: o.status, records: o.records } : { status: o.status, records: o.records, error: o.error };
    return `${JSON.stringify(service)}:${JSON.stringify(body)}`;
  });
  return `{${parts.join(',')}}`;
}

/** Members of one JSON object, comma-separated as they come. */
class ObjectWriter {
  private needComma = false;

  constructor(readonly emit: (text: DocumentText) => void) {}

  member(text: string): void {
    this.emit(this.needComma ? `,${text}` : text);
    this.needComma = true;
  }
}

/** A data map's categories written into an object by the rule above. */
class CategoryWriter {
  private index = -1;
  private openList = false;
  private firstInCategory = true;
  private closed = false;
  readonly counts = new Map<string, number>();

  constructor(
    private readonly categories: readonly DocumentCategory[],
    private readonly out: ObjectWriter,
    /** A batch's text: the records joined by `,`. */
    private readonly textOf: (records: JsonRecords) => Buffer,
  ) {
    for (const c of categories) this.counts.set(c.name, 0);
  }

  add(category: string, records: Records): void {
    if (this.closed) throw new Error(`record batch for category '${category}' after its part of the document was closed`);
    this.advanceTo(category);
    const c = this.categories[this.index];
    if (c === undefined) throw new Error(`unknown category ${category}`);
    if (records.length === 0) return;
    if (c.shape === 'list') {
      // One hash update per batch, not per record: this runs for every exported row.
      if (!this.firstInCategory) this.out.emit(',');
      this.out.emit(records instanceof JsonRecords ? this.textOf(records) : records.join(','));
      this.firstInCategory = false;
    } else {
      if (this.counts.get(c.name) !== 0 || records.length > 1) throw new Error(`category ${c.name} has shape object but more than one record`);
      const first = records instanceof JsonRecords ? records.strings()[0] : records[0];
      const members = (first ?? '').trim().slice(1, -1);
      if (members.length > 0) this.out.member(members);
    }
    this.counts.set(c.name, (this.counts.get(c.name) ?? 0) + records.length);
  }

  /** Writes the categories not reached yet (empty) and closes the last list. */
  close(): void {
    if (this.closed) return;
    this.advanceTo(undefined);
    this.closed = true;
  }

  private advanceTo(category: string | undefined): void {
    const target = category === undefined ? this.categories.length : this.categories.findIndex((c) => c.name === category);
    if (target < 0) throw new Error(`record batch for category '${category}', which the header did not announce`);
    if (target < this.index) throw new Error(`record batch for category '${category}' arrived after a later category`);
    while (this.index < target) {
      this.closeList();
      this.index += 1;
      const next = this.categories[this.index];
      if (next !== undefined) this.open(next);
    }
  }

  private open(c: DocumentCategory): void {
    this.firstInCategory = true;
    if (c.shape === 'list') {
      if (c.countKey !== undefined) this.out.member(`${JSON.stringify(c.countKey)}:${c.totalCount}`);
      this.out.member(`${JSON.stringify(c.documentKey)}:[`);
      this.openList = true;
    }
  }

  private closeList(): void {
    if (this.openList) {
      this.out.emit(']');
      this.openList = false;
    }
  }
}
