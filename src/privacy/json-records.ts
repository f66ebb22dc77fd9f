/**
 * A batch of export records kept as bytes, in the form the gRPC stream sends them: each record's
 * UTF-8 JSON text preceded by its protobuf key and length (RecordBatch.records), with room left in
 * front for the message's header. The server renders its rows straight into this form, so a
 * batch becomes an ExportUserResponse without a copy or a string per record, and the document's
 * text (the records joined by `,`) is made only where it is needed (bench/RESULTS.md, export).
 */

/** Bytes left before the first record for the message header (see withHeader). */
const HEADROOM = 160;
/** RecordBatch.records: field 2, length-delimited. */
const RECORDS_KEY = (2 << 3) | 2;

export const varintSize = (n: number): number => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5);

export function writeVarint(out: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n & 0x7f) | 0x80;
    n >>>= 7;
  }
  out[at++] = n;
  return at;
}

export class JsonRecords {
  private decoded: readonly string[] | undefined;
  private headerWritten = false;

  constructor(
    /** HEADROOM bytes, then the framed records up to the end. */
    private readonly buf: Buffer,
    /** Record i is buf[starts[i], ends[i]). */
    private readonly starts: Uint32Array,
    private readonly ends: Uint32Array,
  ) {}

  static fromStrings(records: readonly string[]): JsonRecords {
    const builder = new JsonRecordsBuilder(records.reduce((n, r) => n + r.length * 3 + 6, 0));
    for (const r of records) {
      builder.begin();
      builder.pushString(r);
      builder.end();
    }
    const batch = builder.take();
    batch.decoded = records;
    return batch;
  }

  get length(): number {
    return this.ends.length;
  }

  /** Bytes of all records' text (without separators). */
  get textBytes(): number {
    let n = 0;
    for (let i = 0; i < this.ends.length; i++) n += (this.ends[i] as number) - (this.starts[i] as number);
    return n;
  }

  /** The records as strings, decoded once when first asked for. */
  strings(): readonly string[] {
    this.decoded ??= Array.from({ length: this.length }, (_, i) => this.buf.toString('utf8', this.starts[i], this.ends[i]));
    return this.decoded;
  }

  /** The records joined by `,` (the document's text for them), in a buffer of their own. */
  joined(): Buffer {
    return this.joinInto(Buffer.allocUnsafe(this.joinedBytes()));
  }

  /** The same written into `scratch` when it is large enough (a view of it), else into a new buffer. */
  joinInto(scratch: Buffer): Buffer {
    const n = this.joinedBytes();
    const out = scratch.length >= n ? scratch : Buffer.allocUnsafe(n);
    let at = 0;
    for (let i = 0; i < this.ends.length; i++) {
      if (i > 0) out[at++] = 0x2c;
      at += this.buf.copy(out, at, this.starts[i], this.ends[i]);
    }
    return out.subarray(0, at);
  }

  /**
   * `header` (of `size` bytes, written by `write` at the offset it is given) followed by the
   * framed records, as one buffer: the header goes into the room left in front, so nothing is
   * copied. Once per batch: a second call would overwrite the first one's header.
   */
  withHeader(size: number, write: (out: Buffer, at: number) => void): Buffer {
    if (this.headerWritten) throw new Error('a record batch is encoded once');
    if (size > HEADROOM) throw new Error(`a batch header of ${size} bytes does not fit in ${HEADROOM}`);
    this.headerWritten = true;
    write(this.buf, HEADROOM - size);
    return this.buf.subarray(HEADROOM - size);
  }

  /** Bytes of the framed records (what follows the header). */
  get framedBytes(): number {
    return this.buf.length - HEADROOM;
  }

  private joinedBytes(): number {
    return this.textBytes + Math.max(0, this.length - 1);
  }
}

/**
 * Renders records into a JsonRecords: `begin()` before a record's text and `end()` after it;
 * between them the renderer writes with `push*`, or straight into `reserve()`'s buffer at `at`.
 */
export class JsonRecordsBuilder {
  private buf: Buffer;
  private starts = new Uint32Array(256);
  private ends = new Uint32Array(256);
  private count = 0;
  private recordStart = 0;
  /** The next byte to write. */
  at = HEADROOM;

  /** `capacity`: bytes of records the first buffer holds; later ones hold what the previous batch needed. */
  constructor(private capacity = 16 * 1024) {
    this.buf = EMPTY;
  }

  get length(): number {
    return this.count;
  }

  /** Bytes of records so far (with their framing). */
  get bytes(): number {
    return this.at - HEADROOM;
  }

  /** Starts a record: its key, and room for a two-byte length (end() adjusts it). */
  begin(): void {
    const buf = this.reserve(3);
    buf[this.at] = RECORDS_KEY;
    this.at += 3;
    this.recordStart = this.at;
  }

  end(): void {
    let start = this.recordStart;
    const length = this.at - start;
    const shift = varintSize(length) - 2;
    if (shift !== 0) {
      // A record under 128 bytes has a one-byte length, one of 16 KiB or more a longer one.
      const buf = this.reserve(Math.max(shift, 0));
      buf.copyWithin(start + shift, start, this.at);
      start += shift;
      this.at += shift;
    }
    writeVarint(this.buf, start - varintSize(length), length);
    if (this.count === this.ends.length) {
      this.starts = grow(this.starts);
      this.ends = grow(this.ends);
    }
    this.starts[this.count] = start;
    this.ends[this.count] = this.at;
    this.count += 1;
  }

  /** Makes room for `n` more bytes; returns the buffer to write them into at `at`. */
  reserve(n: number): Buffer {
    if (this.at + n > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, HEADROOM + this.capacity, this.at + n));
      this.buf.copy(grown, 0, 0, this.at);
      this.buf = grown;
    }
    return this.buf;
  }

  pushString(s: string): void {
    this.reserve(Buffer.byteLength(s, 'utf8'));
    this.at += this.buf.write(s, this.at, 'utf8');
  }

  /** Bytes [from, to) of `src`. */
  pushRange(src: Buffer, from: number, to: number): void {
    const n = to - from;
    const buf = this.reserve(n);
    let at = this.at;
    // A loop beats copy() for the short fields most rows hold.
    if (n < 32) for (let i = from; i < to; i++) buf[at++] = src[i] as number;
    else at += src.copy(buf, at, from, to);
    this.at = at;
  }

  /** The records so far as a batch (it keeps this buffer), and a fresh start. */
  take(): JsonRecords {
    this.reserve(0); // the header's room, even for no records
    const batch = new JsonRecords(this.buf.subarray(0, this.at), this.starts.slice(0, this.count), this.ends.slice(0, this.count));
    // Room for the next batch to cross its limit by a record without growing.
    this.capacity = Math.max(this.capacity, Math.ceil((this.at - HEADROOM) * 1.125));
    this.buf = EMPTY;
    this.count = 0;
    this.at = HEADROOM;
    return batch;
  }
}

const EMPTY = Buffer.alloc(0);

function grow(a: Uint32Array): Uint32Array<ArrayBuffer> {
  const grown = new Uint32Array(a.length * 2);
  grown.set(a);
  return grown;
}
