import type { JsonRecordsBuilder } from './json-records.js';

/**
 * Renders rows read with `COPY … TO STDOUT` (text format) as the JSON texts PostgreSQL's
 * row_to_json would give for the same values, byte for byte. Only column kinds whose rendering
 * is known to match are rendered here; every other type is rendered by PostgreSQL itself
 * (`to_json(expr)::text`, the function row_to_json uses per field) and copied as it is.
 */

/**
 * How a column's COPY text becomes a JSON value:
 * - `string`: text types
 * - `timestamp`: timestamps, as their standard text in UTC (turned into 2024-06-15T10:00:00Z), or
 *   already in that form (formatted by to_char: see exportColumnsQuery)
 * - `number`: integer, numeric and floating-point types (NaN and infinities become strings, as in row_to_json)
 * - `boolean`: `t`/`f`
 * - `json`: json and jsonb, whose text is copied as it is
 * - `rendered`: already JSON, rendered by PostgreSQL with to_json
 */
export type ColumnKind = 'string' | 'timestamp' | 'number' | 'boolean' | 'json' | 'rendered';

const NUMBER_TYPES = new Set(['smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision']);
const STRING_TYPES = new Set(['text', 'character varying', 'character']);

/** The kind of an exported column of information_schema type `dataType`. */
export function columnKind(dataType: string | undefined): ColumnKind {
  if (dataType === undefined) return 'rendered';
  if (STRING_TYPES.has(dataType)) return 'string';
  if (dataType === 'timestamp with time zone' || dataType === 'timestamp without time zone') return 'timestamp';
  if (NUMBER_TYPES.has(dataType)) return 'number';
  if (dataType === 'boolean') return 'boolean';
  if (dataType === 'json' || dataType === 'jsonb') return 'json';
  return 'rendered';
}

/** COPY's text format marks NULL with this. */
const NULL = '\\N';
/** Anything a JSON string must escape (control characters, found with the range below), or COPY's escape character. */
// eslint-disable-next-line no-control-regex -- the control characters are what it looks for
const NEEDS_WORK = /["\\\u0000-\u001f]/;
const COPY_ESCAPES: Record<string, string> = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v' };

/** Undoes COPY's text-format escaping (backslash sequences, including octal and hex forms). */
function unescapeCopyText(field: string): string {
  if (!field.includes('\\')) return field;
  return field.replace(/\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))/gs, (_, oct?: string, hex?: string, ch?: string) => {
    if (oct !== undefined) return String.fromCharCode(parseInt(oct, 8) & 0xff);
    if (hex !== undefined) return String.fromCharCode(parseInt(hex, 16));
    return COPY_ESCAPES[ch ?? ''] ?? ch ?? '';
  });
}

/** A JSON string as PostgreSQL's escape_json writes it (the same escapes as JSON.stringify). */
function jsonString(field: string): string {
  if (!NEEDS_WORK.test(field)) return `"${field}"`;
  return JSON.stringify(unescapeCopyText(field));
}

function jsonValue(kind: ColumnKind, field: string): string {
  if (field === NULL) return 'null';
  switch (kind) {
    case 'string':
    case 'timestamp':
      return jsonString(field);
    case 'boolean':
      return field === 't' ? 'true' : 'false';
    case 'number': {
      // row_to_json quotes what is not a JSON number: NaN, Infinity, -Infinity.
      const c = field.charCodeAt(field.charCodeAt(0) === 45 ? 1 : 0);
      return c >= 48 && c <= 57 ? field : `"${field}"`;
    }
    default:
      return unescapeCopyText(field);
  }
}

const KIND_CODES: Record<ColumnKind, number> = { string: 0, number: 1, boolean: 2, json: 3, rendered: 4, timestamp: 5 };
const [STRING, NUMBER, BOOLEAN, TIMESTAMP] = [0, 1, 2, 5];
const TAB = 0x09;
const QUOTE = 0x22;
const SPACE = 0x20;
const PLUS = 0x2b;
const BACKSLASH = 0x5c;
const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');
/** Bytes that end a field (tab) or keep it off the fast path: in a string, control characters, `"` and `\\`; elsewhere `\\`. */
const STRING_SPECIAL = Uint8Array.from({ length: 256 }, (_, b) => (b < 0x20 || b === QUOTE || b === BACKSLASH ? 1 : 0));
const OTHER_SPECIAL = Uint8Array.from({ length: 256 }, (_, b) => (b === TAB || b === BACKSLASH ? 1 : 0));
const [NULL_BYTES, TRUE_BYTES, FALSE_BYTES] = [utf8('null'), utf8('true'), utf8('false')];

/**
 * Renders COPY text lines of the fields `names`, in order, as JSON objects, straight from the
 * COPY bytes into a JsonRecordsBuilder. A field that needs no escaping (most) is copied as it
 * is while it is scanned; any other goes through the string rules above.
 */
export class CopyRowRenderer {
  private readonly keys: readonly Buffer[];
  private readonly kinds: Uint8Array;
  private readonly kindNames: readonly ColumnKind[];
  /** The most bytes a line's fast path adds to it: keys, quotes, `true` for `t`, a timestamp's `T`, padding and `Z`. */
  private readonly overhead: number;

  constructor(names: readonly string[], kinds: readonly ColumnKind[]) {
    this.keys = names.map((n, i) => utf8(`${i === 0 ? '{' : ','}${JSON.stringify(n)}:`));
    this.kindNames = names.map((_, i) => kinds[i] ?? 'rendered');
    this.kinds = Uint8Array.from(this.kindNames, (k) => KIND_CODES[k]);
    this.overhead = this.keys.reduce((n, k) => n + k.length + 10, 2);
  }

  /** Renders the line in bytes [from, to) of `src` (without its newline) as one record of `out`. */
  renderInto(src: Buffer, from: number, to: number, out: JsonRecordsBuilder): void {
    const keys = this.keys;
    const last = keys.length - 1;
    out.begin();
    if (last < 0) {
      out.pushString('{}');
      out.end();
      return;
    }
    let buf = out.reserve(to - from + this.overhead);
    let at = out.at;
    let p = from;
    for (let i = 0; i <= last; i++) {
      const key = keys[i] as Buffer;
      buf.set(key, at);
      at += key.length;
      const kind = this.kinds[i] as number;
      const start = p;
      const mark = at;
      // Copies the field up to the next tab (the last one to the line's end) while looking for
      // what the fast path cannot take: anything to escape in a string, any COPY escape. One
      // table lookup per byte: SPECIAL[b] is 0 for the bytes copied as they are.
      const special = kind === STRING || kind === TIMESTAMP ? STRING_SPECIAL : OTHER_SPECIAL;
      let plain = true;
      if (kind === STRING) buf[at++] = QUOTE;
      for (; p < to; p++) {
        const b = src[p] as number;
        if (special[b] !== 0) {
          if (b === TAB && i < last) break;
          if (b !== TAB) plain = false;
        }
        buf[at++] = b;
      }
      if (kind === STRING) buf[at++] = QUOTE;
      else if (plain && kind === TIMESTAMP) at = timestampInto(src, start, p, buf, mark);
      else if (plain && kind === BOOLEAN) {
        at = mark;
        const value = src[start] === 0x74 ? TRUE_BYTES : FALSE_BYTES;
        buf.set(value, at);
        at += value.length;
      } else if (plain && kind === NUMBER) {
        // row_to_json quotes what is not a JSON number: NaN, Infinity, -Infinity.
        const c = src[src[start] === 0x2d ? start + 1 : start] as number;
        if (c < 0x30 || c > 0x39) {
          at = mark;
          buf[at++] = QUOTE;
          for (let k = start; k < p; k++) buf[at++] = src[k] as number;
          buf[at++] = QUOTE;
        }
      }
      if (!plain) {
        out.at = mark;
        this.renderSlow(src, start, p, i, out);
        buf = out.reserve(to - p + this.overhead);
        at = out.at;
      }
      p++;
    }
    buf[at++] = 0x7d;
    out.at = at;
    out.end();
  }

  /** A field with a backslash (NULL included) or, in a string, anything JSON escapes. */
  private renderSlow(src: Buffer, start: number, end: number, i: number, out: JsonRecordsBuilder): void {
    if (end - start === 2 && src[start] === BACKSLASH && src[start + 1] === 0x4e) out.pushRange(NULL_BYTES, 0, 4);
    else out.pushString(jsonValue(this.kindNames[i] ?? 'rendered', src.toString('utf8', start, end)));
  }
}

/**
 * Writes at `at` the JSON string of a timestamp field (bytes [from, to) of `src`): PostgreSQL's
 * ISO text in UTC, `2024-06-15 10:00:00.12+00` (`+00` only with a time zone), becomes
 * `"2024-06-15T10:00:00.120000Z"`, as to_char formats it (microseconds only when present); a
 * field already in that form (to_char's, for the years outside 1 to 9999) is quoted as it is.
 * Returns where the output ends.
 */
function timestampInto(src: Buffer, from: number, to: number, buf: Buffer, at: number): number {
  buf[at++] = QUOTE;
  if (src[from + 10] !== SPACE) {
    for (let k = from; k < to; k++) buf[at++] = src[k] as number;
    buf[at++] = QUOTE;
    return at;
  }
  let end = to;
  if (src[end - 3] === PLUS) end -= 3; // +00
  for (let k = from; k < from + 10; k++) buf[at++] = src[k] as number;
  buf[at++] = 0x54; // T
  const seconds = from + 19;
  for (let k = from + 11; k < seconds; k++) buf[at++] = src[k] as number;
  if (end > seconds) {
    // .f to .ffffff, padded to six digits
    for (let k = seconds; k < end; k++) buf[at++] = src[k] as number;
    for (let pad = end - seconds - 1; pad < 6; pad++) buf[at++] = 0x30;
  }
  buf[at++] = 0x5a; // Z
  buf[at++] = QUOTE;
  return at;
}
