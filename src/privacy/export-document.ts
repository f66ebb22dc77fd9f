import { createHash, type Hash } from 'node:crypto';

/**
 * The canonical export document, assembled from the stream's header and batches. The server
 * hashes it as it streams; a client rebuilds the same bytes and compares the trailer's SHA-256.
 *
 * The rule: `{`, then for each category in header order, joined by `,`:
 *  - shape "object": the members of its single record (the record without its braces);
 *  - shape "list": `"<count_key>":<total_count>,` when a count key is set, then
 *    `"<document_key>":[` + the records joined by `,` + `]`.
 * then `}`. Records are the JSON texts exactly as streamed.
 */

export interface DocumentCategory {
  readonly name: string;
  readonly documentKey: string;
  readonly shape: 'object' | 'list';
  readonly countKey?: string | undefined;
  readonly totalCount: number;
}

export class ExportDocumentAssembler {
  private readonly hash: Hash = createHash('sha256');
  private index = -1;
  private openList = false;
  private firstInCategory = true;
  private needComma = false;
  private result: { sha256: string; counts: ReadonlyMap<string, number> } | undefined;
  private readonly exported = new Map<string, number>();

  constructor(
    private readonly categories: readonly DocumentCategory[],
    private readonly sink?: (chunk: string) => void,
  ) {
    for (const c of categories) this.exported.set(c.name, 0);
    this.emit('{');
  }

  /** Appends a batch; batches of one category must be contiguous and in header order. */
  add(category: string, records: readonly string[]): void {
    if (this.result !== undefined) throw new Error('export document already finished');
    this.advanceTo(category);
    const c = this.categories[this.index];
    if (c === undefined) throw new Error(`unknown category ${category}`);
    if (records.length === 0) return;
    if (c.shape === 'list') {
      // One hash update per batch, not per record: this runs for every exported row.
      this.emit(this.firstInCategory ? records.join(',') : `,${records.join(',')}`);
      this.firstInCategory = false;
    } else {
      if (this.exported.get(c.name) !== 0 || records.length > 1) throw new Error(`category ${c.name} has shape object but more than one record`);
      const members = (records[0] ?? '').trim().slice(1, -1);
      if (members.length > 0) this.member(members);
    }
    this.exported.set(c.name, (this.exported.get(c.name) ?? 0) + records.length);
  }

  /** Closes the document; returns the hex SHA-256 and the records per category. */
  finish(): { sha256: string; counts: ReadonlyMap<string, number> } {
    if (this.result === undefined) {
      this.advanceTo(undefined);
      this.emit('}');
      this.result = { sha256: this.hash.digest('hex'), counts: this.exported };
    }
    return this.result;
  }

  private advanceTo(category: string | undefined): void {
    const target = category === undefined ? this.categories.length : this.categories.findIndex((c) => c.name === category);
    if (target < 0) throw new Error(`record batch for category '${category}', which the header did not announce`);
    if (target < this.index) throw new Error(`record batch for category '${category}' arrived after a later category`);
    while (this.index < target) {
      this.closeCurrent();
      this.index += 1;
      const next = this.categories[this.index];
      if (next !== undefined) this.open(next);
    }
  }

  private open(c: DocumentCategory): void {
    this.firstInCategory = true;
    if (c.shape === 'list') {
      if (c.countKey !== undefined) this.member(`${JSON.stringify(c.countKey)}:${c.totalCount}`);
      this.member(`${JSON.stringify(c.documentKey)}:[`);
      this.openList = true;
    }
  }

  private closeCurrent(): void {
    if (this.openList) {
      this.emit(']');
      this.openList = false;
    }
  }

  private member(text: string): void {
    this.emit(this.needComma ? `,${text}` : text);
    this.needComma = true;
  }

  private emit(chunk: string): void {
    this.hash.update(chunk);
    this.sink?.(chunk);
  }
}
