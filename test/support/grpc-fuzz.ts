import { connect as http2Connect, constants as h2 } from 'node:http2';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import * as grpc from '@grpc/grpc-js';
import {
  ExportUserRequest,
  ForgetUserRequest,
  GetExportArtifactRequest,
  GetPrivacyRequestRequest,
  ListConsentsRequest,
  ListPrivacyRequestsRequest,
  RecordConsentRequest,
  RectifyUserRequest,
  RestrictProcessingRequest,
  StoreExportRequest,
  WithdrawConsentRequest,
} from '../../src/gen/lethe/privacy/v1/privacy.js';

/**
 * The machinery of the gRPC fuzz test (test/integration/grpc-fuzz.test.ts): a seeded PRNG, every
 * method of the port with a valid request for it, the mutations that break a request, and calls
 * that send raw bytes through grpc-js and raw HTTP/2 and report what came back.
 */

const UUID = '00000000-0000-4000-8000-000000000000';

export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    // mulberry32
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
  return { next, int, bytes, pick };
}
type Rng = ReturnType<typeof prng>;

export const writer = () => new BinaryWriter();
const reflectionRequest = (r: Rng) =>
  r.pick([
    writer().tag(1, WireType.LengthDelimited).string('localhost').tag(7, WireType.LengthDelimited).string('*').finish(),
    writer().tag(4, WireType.LengthDelimited).string('lethe.privacy.v1.PrivacyService').finish(),
    writer().tag(3, WireType.LengthDelimited).string('lethe/privacy/v1/privacy.proto').finish(),
    writer().tag(5, WireType.LengthDelimited).bytes(writer().tag(1, WireType.LengthDelimited).string('x.Y').tag(2, WireType.Varint).int32(7).finish()).finish(),
  ]);

export interface Method {
  readonly path: string;
  readonly kind: 'unary' | 'server-stream' | 'bidi';
  readonly authenticated: boolean;
  valid(r: Rng): Uint8Array;
}

export const METHODS: readonly Method[] = [
  {
    path: '/lethe.privacy.v1.PrivacyService/ExportUser',
    kind: 'server-stream',
    authenticated: true,
    valid: () => ExportUserRequest.encode({ userId: 'user-id-123', reason: 'fuzz' }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/ForgetUser',
    kind: 'unary',
    authenticated: true,
    valid: (r) =>
      ForgetUserRequest.encode({
        userId: r.pick(['member-user-id-456', 'nobody']),
        reason: 'fuzz',
        idempotencyKey: `k-${r.int(1000)}`,
        requestedBy: '',
        includeRequest: r.next() < 0.5,
      }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/GetPrivacyRequest',
    kind: 'unary',
    authenticated: true,
    valid: () => GetPrivacyRequestRequest.encode({ id: UUID }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/ListPrivacyRequests',
    kind: 'unary',
    authenticated: true,
    valid: (r) =>
      ListPrivacyRequestsRequest.encode({
        subjectId: '',
        state: r.int(6),
        overdueOnly: r.next() < 0.5,
        pageSize: r.int(600),
        pageToken: r.pick(['', 'v1.x.y']),
        dueBefore: undefined,
      }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/StoreExport',
    kind: 'unary',
    authenticated: true,
    valid: (r) =>
      StoreExportRequest.encode({
        userId: r.pick(['member-user-id-456', 'nobody']),
        reason: 'fuzz',
        idempotencyKey: `s-${r.int(50)}`,
        requestedBy: '',
        includeRequest: r.next() < 0.5,
      }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/GetExportArtifact',
    kind: 'server-stream',
    authenticated: true,
    valid: () => GetExportArtifactRequest.encode({ requestId: UUID }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/RectifyUser',
    kind: 'unary',
    authenticated: true,
    valid: (r) =>
      RectifyUserRequest.encode({
        userId: r.pick(['member-user-id-456', 'nobody']),
        changes: { [r.pick(['email', 'name'])]: r.pick(['fuzz@example.org', 'not-an-email']) },
        reason: 'fuzz',
        idempotencyKey: `r-${r.int(1000)}`,
        requestedBy: '',
      }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/RestrictProcessing',
    kind: 'unary',
    authenticated: true,
    valid: (r) =>
      RestrictProcessingRequest.encode({
        userId: r.pick(['member-user-id-456', 'nobody']),
        purposes: [r.pick(['marketing', 'profiling', 'ads'])],
        basis: r.int(3),
        reason: 'fuzz',
        idempotencyKey: `p-${r.int(1000)}`,
        requestedBy: '',
      }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/RecordConsent',
    kind: 'unary',
    authenticated: true,
    valid: (r) =>
      RecordConsentRequest.encode({
        userId: r.pick(['member-user-id-456', 'nobody']),
        purpose: r.pick(['marketing', 'analytics']),
        textVersion: `v${r.int(3)}`,
        textSha256: '',
        source: 'fuzz',
      }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/WithdrawConsent',
    kind: 'unary',
    authenticated: true,
    valid: (r) => WithdrawConsentRequest.encode({ userId: r.pick(['member-user-id-456', 'nobody']), purposes: [], source: 'fuzz', reason: '' }).finish(),
  },
  {
    path: '/lethe.privacy.v1.PrivacyService/ListConsents',
    kind: 'unary',
    authenticated: true,
    valid: (r) => ListConsentsRequest.encode({ userId: r.pick(['member-user-id-456', 'nobody']) }).finish(),
  },
  {
    path: '/grpc.health.v1.Health/Check',
    kind: 'unary',
    authenticated: false,
    valid: (r) =>
      writer()
        .tag(1, WireType.LengthDelimited)
        .string(r.pick(['', 'lethe.privacy.v1.PrivacyService', 'liveness', 'nope']))
        .finish(),
  },
  {
    path: '/grpc.health.v1.Health/Watch',
    kind: 'server-stream',
    authenticated: false,
    valid: () => writer().tag(1, WireType.LengthDelimited).string('').finish(),
  },
  { path: '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', kind: 'bidi', authenticated: false, valid: reflectionRequest },
  { path: '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo', kind: 'bidi', authenticated: false, valid: reflectionRequest },
];

/** A varint of `value`, or `extra` bytes longer than needed (an overlong encoding). */
function varint(value: number, extra = 0): Buffer {
  const out: number[] = [];
  let v = value >>> 0;
  do {
    out.push((v & 0x7f) | 0x80);
    v >>>= 7;
  } while (v > 0);
  for (let i = 0; i < extra; i++) out.push(0x80);
  out.push(0);
  // The last byte ends the varint.
  out[out.length - 2] = (out[out.length - 2] ?? 0) | 0x80;
  return Buffer.from(out);
}

/** The malformed payload kinds, each from a seeded generator. */
export const MUTATIONS: ReadonlyArray<readonly [string, (r: Rng, valid: Uint8Array) => Buffer]> = [
  ['random bytes', (r) => r.bytes(r.int(200))],
  [
    'mutated valid message',
    (r, valid) => {
      const b = Buffer.from(valid);
      for (let i = 0, n = 1 + r.int(4); i < n && b.length > 0; i++) b[r.int(b.length)] = r.int(256);
      return b;
    },
  ],
  ['truncated valid message', (r, valid) => Buffer.from(valid).subarray(0, valid.length === 0 ? 0 : r.int(valid.length))],
  ['valid prefix, garbage tail', (r, valid) => Buffer.concat([Buffer.from(valid), r.bytes(1 + r.int(20))])],
  // The 149-byte reflection request: a string whose length field reads 4,294,967,295.
  [
    'absurd string length',
    (r) =>
      Buffer.concat([Buffer.from([(r.pick([1, 3, 4, 7]) << 3) | WireType.LengthDelimited]), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]), r.bytes(r.int(144))]),
  ],
  [
    'absurd nested length',
    (r) => {
      const inner = Buffer.concat([Buffer.from([(1 << 3) | WireType.LengthDelimited, 0xff, 0xff, 0xff, 0xff, 0x0f]), r.bytes(8)]);
      return Buffer.concat([Buffer.from([(5 << 3) | WireType.LengthDelimited]), varint(inner.length), inner]);
    },
  ],
  ['length past the end', (r) => Buffer.concat([Buffer.from([(1 << 3) | WireType.LengthDelimited]), varint(50 + r.int(5000)), r.bytes(r.int(40))])],
  ['overlong varint', (r) => Buffer.concat([Buffer.from([(r.pick([2, 3, 4]) << 3) | WireType.Varint]), Buffer.alloc(11 + r.int(30), 0xff)])],
  ['overlong tag', (r) => Buffer.concat([Buffer.alloc(6 + r.int(10), 0x80), Buffer.from([0x01])])],
  ['padded varint', (r) => Buffer.concat([Buffer.from([(3 << 3) | WireType.Varint]), varint(r.int(100), 3 + r.int(8))])],
  ['wrong wire type', (r) => Buffer.concat([Buffer.from([(r.pick([1, 2, 3, 4, 5]) << 3) | r.pick([0, 1, 3, 4, 5, 6, 7])]), r.bytes(r.int(16))])],
  ['field number zero', (r) => Buffer.concat([Buffer.from([r.pick([0, 2, 5])]), r.bytes(r.int(8))])],
  ['deep groups', (r) => Buffer.alloc(200 + r.int(2000), (9 << 3) | WireType.StartGroup)],
  ['invalid UTF-8 string', (r) => Buffer.concat([Buffer.from([(1 << 3) | WireType.LengthDelimited, 4]), Buffer.from([0xff, 0xfe, 0xc0, r.int(256)])])],
  [
    'oversized for health and reflection',
    (r) => Buffer.concat([Buffer.from([(1 << 3) | WireType.LengthDelimited]), varint(8_000), Buffer.alloc(8_000, 0x61 + r.int(20))]),
  ],
];

export interface Outcome {
  readonly code: number;
  readonly ms: number;
}

const identity = (b: Buffer) => b;

export function call(client: grpc.Client, m: Method, payload: Buffer, token: string | undefined): Promise<Outcome> {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  const deadline = Date.now() + 10_000;
  const started = performance.now();
  return new Promise((resolve) => {
    const done = (code: number) => resolve({ code, ms: performance.now() - started });
    if (m.kind === 'unary') {
      client.makeUnaryRequest(m.path, identity, identity, payload, md, { deadline }, (err) =>
        done(err === null ? grpc.status.OK : (err.code ?? grpc.status.UNKNOWN)),
      );
      return;
    }
    const stream =
      m.kind === 'server-stream'
        ? client.makeServerStreamRequest(m.path, identity, identity, payload, md, { deadline })
        : client.makeBidiStreamRequest(m.path, identity, identity, md, { deadline });
    let answered = false;
    // A message means the request was decoded and served: enough (Watch would go on forever).
    stream.on('data', () => {
      if (answered) return;
      answered = true;
      stream.cancel();
      done(grpc.status.OK);
    });
    stream.on('error', (err: grpc.ServiceError) => answered || ((answered = true), done(err.code)));
    stream.on('status', (s: grpc.StatusObject) => answered || ((answered = true), done(s.code)));
    if (m.kind === 'bidi') {
      const duplex = stream as grpc.ClientDuplexStream<Buffer, Buffer>;
      duplex.write(payload);
      duplex.end();
    }
  });
}

/** One gRPC request over raw HTTP/2: headers and body as given; answers the grpc-status (OK once a message arrives), or only the HTTP status when there is none. */
export function rawCall(
  address: string,
  path: string,
  body: Buffer,
  headers: Record<string, string> = {},
): Promise<{ httpStatus: number; grpcStatus: number | undefined; grpcMessage: string }> {
  return new Promise((resolve, reject) => {
    const session = http2Connect(`http://${address}`);
    session.on('error', reject);
    const req = session.request({
      [h2.HTTP2_HEADER_METHOD]: 'POST',
      [h2.HTTP2_HEADER_PATH]: path,
      'content-type': 'application/grpc',
      te: 'trailers',
      ...headers,
    });
    let httpStatus = 0;
    let grpcStatus: number | undefined;
    let grpcMessage = '';
    const read = (h: Record<string, unknown>) => {
      if (h['grpc-status'] !== undefined) grpcStatus = Number(h['grpc-status']);
      if (typeof h['grpc-message'] === 'string') grpcMessage = decodeURIComponent(h['grpc-message']);
    };
    req.on('response', (h) => {
      httpStatus = Number(h[h2.HTTP2_HEADER_STATUS]);
      read(h);
    });
    req.on('trailers', read);
    // A message means the request was decoded and served (Watch would stream for ever).
    req.on('data', () => {
      grpcStatus ??= grpc.status.OK;
      req.close();
    });
    req.on('close', () => {
      session.close();
      resolve({ httpStatus, grpcStatus, grpcMessage });
    });
    req.on('error', () => undefined);
    req.setTimeout(10_000, () => req.close());
    req.end(body);
  });
}

export const ANSWERED_BY_GRPC_JS = new Set(['grpc-timeout is not valid', 'Request message could not be decompressed']);

export const frame = (payload: Buffer, opts: { compressed?: boolean; length?: number } = {}) => {
  const head = Buffer.alloc(5);
  head.writeUInt8(opts.compressed === true ? 1 : 0, 0);
  head.writeUInt32BE(opts.length ?? payload.length, 1);
  return Buffer.concat([head, payload]);
};
