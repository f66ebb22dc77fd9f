import { type DescMessage, createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { type CallContext, type ServerMiddlewareCall, ServerError, Status } from 'nice-grpc';
import type { Logger } from 'pino';

/**
 * Every request message, of every service on the port, passes here before its service's own
 * decoder runs. grpc-js answers INTERNAL ("Error deserializing request"), unlogged and uncounted,
 * when a decoder throws, and some decoders do not fail fast: google-protobuf's (server
 * reflection) believes a string length of 4,294,967,295 and loops for minutes on a 149-byte
 * request, blocking the event loop. So the guard
 *
 * - refuses a message over the method's size limit without reading it;
 * - parses it first against its schema (the server's descriptor set) with @bufbuild/protobuf's
 *   reader, which checks every length against the bytes actually present, caps nesting, and
 *   verifies UTF-8: linear in the message's size;
 * - only then runs the service's decoder, and
 * - returns a marker instead of throwing, which `refuseUndecodable` (a middleware inside the
 *   logging one) turns into INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for size): logged without
 *   the payload and counted like every other call.
 */

const UNDECODABLE = Symbol('lethe.undecodable');

interface Undecodable {
  readonly [UNDECODABLE]: 'too large' | 'malformed';
  readonly bytes: number;
  readonly limit: number;
}

export function isUndecodable(value: unknown): value is Undecodable {
  return typeof value === 'object' && value !== null && UNDECODABLE in value;
}

/** The request schemas of every method in a descriptor set, by gRPC path (`/pkg.Service/Method`). */
export class RequestSchemas {
  private readonly byPath = new Map<string, DescMessage>();

  constructor(descriptorSet: Uint8Array) {
    const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptorSet));
    for (const type of registry) {
      if (type.kind !== 'service') continue;
      for (const method of type.methods) this.byPath.set(`/${type.typeName}/${method.name}`, method.input);
    }
  }

  of(path: string): DescMessage {
    const schema = this.byPath.get(path);
    if (schema === undefined) throw new Error(`no request schema for ${path} in the descriptor set`);
    return schema;
  }
}

interface GuardOptions {
  readonly schemas: RequestSchemas;
  /** The largest request this service accepts (at most the server-wide receive limit). */
  readonly maxRequestBytes: number;
  /** Check against the schema of another path (a service published under a second name with the same messages). */
  readonly schemaPath?: (path: string) => string;
}

type Decode = (bytes: Uint8Array) => unknown;

function guardedDecoder(path: string, decode: Decode, opts: GuardOptions): Decode {
  const schema = opts.schemas.of(opts.schemaPath?.(path) ?? path);
  const limit = opts.maxRequestBytes;
  return (bytes) => {
    if (bytes.length > limit) return { [UNDECODABLE]: 'too large', bytes: bytes.length, limit } satisfies Undecodable;
    try {
      fromBinary(schema, bytes, { readUnknownFields: false });
      return decode(bytes);
    } catch {
      return { [UNDECODABLE]: 'malformed', bytes: bytes.length, limit } satisfies Undecodable;
    }
  };
}

interface TsProtoMethod {
  readonly name: string;
  readonly requestType: { decode(input: Uint8Array): unknown };
}
interface TsProtoDefinition {
  readonly fullName: string;
  readonly methods: Readonly<Record<string, TsProtoMethod>>;
}
interface GrpcJsMethod {
  readonly path: string;
  readonly requestDeserialize: (bytes: Buffer) => unknown;
}

/** A ts-proto service definition whose request decoders are guarded; the same type, so implementations still type-check. */
export function guardTsProtoService<D extends TsProtoDefinition>(definition: D, opts: GuardOptions): D {
  const methods: Record<string, TsProtoMethod> = {};
  for (const [key, method] of Object.entries(definition.methods)) {
    const decode = guardedDecoder(`/${definition.fullName}/${method.name}`, (b) => method.requestType.decode(b), opts);
    methods[key] = { ...method, requestType: { ...method.requestType, decode } };
  }
  return { ...definition, methods };
}

/** The same for a grpc-js service definition (server reflection's); `rename` publishes it under another path too. */
export function guardGrpcJsService<D extends Readonly<Record<string, GrpcJsMethod>>>(
  definition: D,
  opts: GuardOptions & { rename?: (path: string) => string },
): D {
  const guarded: Record<string, GrpcJsMethod> = {};
  for (const [key, method] of Object.entries(definition)) {
    const path = opts.rename?.(method.path) ?? method.path;
    guarded[key] = { ...method, path, requestDeserialize: guardedDecoder(method.path, method.requestDeserialize as Decode, opts) };
  }
  return guarded as D;
}

/**
 * Answers a request the guard could not decode: INVALID_ARGUMENT (RESOURCE_EXHAUSTED when it was
 * too large), before any handler or authentication runs. Logs the method, the reason and the
 * size, never the bytes. In a client stream the marker arrives as a message: the stream fails
 * when the handler reaches it.
 */
export function refuseUndecodable(logger: Logger) {
  const refuse = (path: string, u: Undecodable): ServerError => {
    logger.warn({ method: path, reason: u[UNDECODABLE], bytes: u.bytes }, 'undecodable request');
    return u[UNDECODABLE] === 'too large'
      ? new ServerError(Status.RESOURCE_EXHAUSTED, `Request message larger than max (${u.bytes} vs. ${u.limit})`)
      : new ServerError(Status.INVALID_ARGUMENT, 'Request message could not be decoded');
  };
  return async function* <Req, Res>(call: ServerMiddlewareCall<Req, Res>, context: CallContext) {
    const path = call.method.path;
    if (!call.requestStream) {
      if (isUndecodable(call.request)) throw refuse(path, call.request);
      return yield* call.next(call.request, context);
    }
    const requests = call.request as AsyncIterable<unknown>;
    async function* checked() {
      for await (const request of requests) {
        if (isUndecodable(request)) throw refuse(path, request);
        yield request;
      }
    }
    return yield* call.next(checked() as Req, context);
  };
}
