/**
 * Renders rows read with `COPY … TO STDOUT` (text format) as the JSON texts PostgreSQL's
 * row_to_json would give for the same values, byte for byte. Only column kinds whose rendering
 * is known to match are rendered here; every other type is rendered by PostgreSQL itself
 * (`to_json(expr)::text`, the function row_to_json uses per field) and copied as it is.
 */

/**
 * How a column's COPY text becomes a JSON value:
 * - `string`: text types (and the timestamps, which PostgreSQL formats with to_char)
 * - `number`: integer, numeric and floating-point types (NaN and infinities become strings, as in row_to_json)
 * - `boolean`: `t`/`f`
 * - `json`: json and jsonb, whose text is copied as it is
 * - `rendered`: already JSON, rendered by PostgreSQL with to_json
 */
export type ColumnKind = 'string' | 'number' | 'boolean' | 'json' | 'rendered';

const NUMBER_TYPES = new Set(['smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision']);
const STRING_TYPES = new Set(['text', 'character varying', 'character']);

/** The kind of an exported column of information_schema type `dataType` (`timestamp` for the to_char-formatted timestamps). */
export function columnKind(dataType: string | undefined): ColumnKind {
  if (dataType === undefined) return 'rendered';
  if (STRING_TYPES.has(dataType)) return 'string';
  if (dataType === 'timestamp with time zone' || dataType === 'timestamp without time zone') return 'string';
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

/** Renders one COPY text line (without its newline) of the fields `names`, in order, as a JSON object. */
export class CopyRowRenderer {
  private readonly keys: readonly string[];

  constructor(
    names: readonly string[],
    private readonly kinds: readonly ColumnKind[],
  ) {
    this.keys = names.map((n, i) => `${i === 0 ? '{' : ','}${JSON.stringify(n)}:`);
  }

  render(line: string): string {
    const keys = this.keys;
    const kinds = this.kinds;
    let out = '';
    let start = 0;
    for (let i = 0; i < keys.length; i++) {
      let end = i === keys.length - 1 ? line.length : line.indexOf('\t', start);
      if (end < 0) end = line.length;
      out += keys[i] + jsonValue(kinds[i] ?? 'rendered', line.slice(start, end));
      start = end + 1;
    }
    return keys.length === 0 ? '{}' : `${out}}`;
  }
}
