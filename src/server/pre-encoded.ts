/**
 * Responses a handler has already encoded. The export's record batches are written straight
 * from the rendered bytes (api/export-messages.ts) instead of being built as objects that the
 * generated code then encodes record by record; the service definition passes them through.
 */

const BYTES = Symbol('lethe.preEncoded');

interface PreEncoded {
  readonly [BYTES]: Uint8Array;
}

const isPreEncoded = (v: unknown): v is PreEncoded => typeof v === 'object' && v !== null && BYTES in v;

/** A response message of type T given as its encoding (which the caller guarantees is one of T). */
export function preEncoded<T>(bytes: Uint8Array): T {
  return { [BYTES]: bytes } satisfies PreEncoded as T;
}

interface TsProtoType {
  encode(message: never): { finish(): Uint8Array };
  fromPartial(object: never): unknown;
}
interface TsProtoMethod {
  readonly responseType: TsProtoType;
}
interface TsProtoDefinition {
  readonly methods: Readonly<Record<string, TsProtoMethod>>;
}

/** The same ts-proto service definition, whose responses may also be preEncoded(). */
export function acceptPreEncoded<D extends TsProtoDefinition>(definition: D): D {
  const methods: Record<string, TsProtoMethod> = {};
  for (const [key, method] of Object.entries(definition.methods)) {
    const type = method.responseType;
    const responseType: TsProtoType = {
      ...type,
      fromPartial: (v: never) => (isPreEncoded(v) ? v : type.fromPartial(v)),
      encode: (v: never) => (isPreEncoded(v) ? { finish: () => v[BYTES] } : type.encode(v)),
    };
    methods[key] = { ...method, responseType };
  }
  return { ...definition, methods };
}
