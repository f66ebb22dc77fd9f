import { Readable } from 'node:stream';
import type { Connection, Submittable } from 'pg';

/**
 * `COPY … TO STDOUT` on a node-postgres client, each row handed to a consumer as a range of the
 * socket's own buffer: no object, string or copy per row. pg-copy-streams (which this follows:
 * it takes the socket from pg for the COPY and gives it back after) makes a Buffer per row and
 * joins them per chunk, which cost as much as rendering the row (bench/RESULTS.md, export).
 *
 * It is a Readable of the consumer's pages, so a slow reader stops the socket being read and
 * PostgreSQL waits (backpressure). Submit it with `client.query(copyOut)`.
 */

/** Takes the rows; returns a page whenever one is complete. */
export interface CopyRowConsumer<T> {
  /** One row: bytes [from, to) of `src`, without its newline. `src` is reused after the call. */
  row(src: Buffer, from: number, to: number): T | undefined;
  /** What is left once the last row came. */
  rest(): T | undefined;
}

const HEADER_BYTES = 5;
const COPY_DATA = 0x64; // 'd'
const COPY_DONE = 0x63; // 'c'
const ERROR_RESPONSE = 0x45; // 'E'
/** Messages that may come before or among the rows (CopyOutResponse, ParameterStatus, NoticeResponse, NotificationResponse). */
const PASSED_OVER = new Set([0x48, 0x53, 0x4e, 0x41]);

type DataHandler = (chunk: Buffer) => void;

export class CopyOutQuery<T> extends Readable implements Submittable {
  private connection: Connection | undefined;
  private pgDataHandler: DataHandler | undefined;
  /** An incomplete message carried over from earlier chunks. */
  private partial: Buffer[] = [];
  private partialBytes = 0;
  private drained = false;
  private forwarding = false;
  private readonly onReadable = () => this.forward();

  constructor(
    /** The COPY statement (pg's submittable interface reads `text`). */
    readonly text: string,
    private readonly consumer: CopyRowConsumer<T>,
  ) {
    super({ objectMode: true, highWaterMark: 1 });
  }

  /** Called by pg when the query is sent. */
  submit(connection: Connection): void {
    this.connection = connection;
    const stream = connection.stream;
    const listeners = stream.listeners('data') as DataHandler[];
    if (listeners.length !== 1) throw new Error(`expected one data listener on the connection, found ${listeners.length}`);
    this.pgDataHandler = listeners[0];
    stream.removeListener('data', this.pgDataHandler as DataHandler);
    stream.pause();
    this.forward();
    stream.on('readable', this.onReadable);
    connection.query(this.text);
  }

  override _read(): void {
    this.drained = true;
    this.forward();
  }

  /** pg calls these for the messages after the COPY, or for an error. */
  handleError(err: Error): void {
    this.destroy(err);
  }
  handleCommandComplete(): void {}
  handleReadyForQuery(): void {}

  private forward(): void {
    const stream = this.connection?.stream;
    if (stream === undefined || this.forwarding || !this.drained) return;
    this.forwarding = true;
    for (
      let chunk = stream.read() as Buffer | null;
      chunk !== null;
      chunk = this.drained && this.connection !== undefined ? (stream.read() as Buffer | null) : null
    ) {
      this.drained = this.parse(chunk);
    }
    this.forwarding = false;
  }

  /** Consumes whole messages; returns false once the reader has enough for now. */
  private parse(chunk: Buffer): boolean {
    let buf = chunk;
    if (this.partialBytes > 0) {
      this.partial.push(chunk);
      this.partialBytes += chunk.length;
      // A long row spans many chunks: they are joined once, when the message is whole.
      const first = this.partial[0] as Buffer;
      const needed = first.length >= HEADER_BYTES ? 1 + first.readUInt32BE(1) : HEADER_BYTES;
      if (this.partialBytes < needed) return true;
      buf = Buffer.concat(this.partial, this.partialBytes);
      this.partial = [];
      this.partialBytes = 0;
    }
    let drained = true;
    let at = 0;
    while (buf.length - at >= HEADER_BYTES) {
      const code = buf[at] as number;
      const end = at + 1 + buf.readUInt32BE(at + 1);
      // pg parses the error itself, and calls handleError.
      if (code === ERROR_RESPONSE) return this.giveBack(buf.subarray(at));
      if (end > buf.length) break;
      if (code === COPY_DATA) {
        // One row per message (text format), ending with its newline.
        const page = this.consumer.row(buf, at + HEADER_BYTES, buf[end - 1] === 0x0a ? end - 1 : end);
        if (page !== undefined) drained = this.push(page);
      } else if (!PASSED_OVER.has(code)) {
        const rest = this.consumer.rest();
        if (rest !== undefined) this.push(rest);
        this.push(null);
        return this.giveBack(buf.subarray(code === COPY_DONE ? end : at));
      }
      at = end;
    }
    if (at < buf.length) {
      // Copied: the socket's buffer is not ours to keep.
      const kept = Buffer.from(buf.subarray(at));
      this.partial.push(kept);
      this.partialBytes = kept.length;
    }
    return drained;
  }

  /** Hands the connection back to pg with what it has not read yet (CommandComplete, ReadyForQuery…). */
  private giveBack(unread: Buffer): boolean {
    const connection = this.connection;
    const handler = this.pgDataHandler;
    if (connection === undefined || handler === undefined) return false;
    this.connection = undefined;
    const stream = connection.stream;
    stream.removeListener('readable', this.onReadable);
    stream.addListener('data', handler);
    handler(unread);
    // pg's handler may pause the stream; it resumes once that handler has returned.
    process.nextTick(() => stream.resume());
    return false;
  }
}
