import { readFileSync } from 'node:fs';
import { Server, ServerCredentials, type ServerWritableStream } from '@grpc/grpc-js';

/**
 * The floor of export-typical: a gRPC server in a process of its own that answers every
 * ExportUser with the same messages, already encoded (the JSON array of base64 messages in the
 * file named by LETHE_BENCH_FLOOR_MESSAGES, captured from a real export), with no token check,
 * no database and none of Lethe's middleware. What the bench's clients see from it is what gRPC
 * and the client alone cost on this machine, before any export does its work.
 * `--listen HOST:PORT`; prints `ready <port>` on stdout once it listens.
 */
const file = process.env.LETHE_BENCH_FLOOR_MESSAGES;
if (file === undefined) throw new Error('LETHE_BENCH_FLOOR_MESSAGES is not set');
const messages = (JSON.parse(readFileSync(file, 'utf8')) as string[]).map((m) => Buffer.from(m, 'base64'));
const at = process.argv.indexOf('--listen');
const listen = at >= 0 ? (process.argv[at + 1] ?? '127.0.0.1:0') : '127.0.0.1:0';

const bytes = (b: Buffer): Buffer => b;
const server = new Server();
server.addService(
  {
    ExportUser: {
      path: '/lethe.privacy.v1.PrivacyService/ExportUser',
      requestStream: false,
      responseStream: true,
      requestSerialize: bytes,
      requestDeserialize: bytes,
      responseSerialize: bytes,
      responseDeserialize: bytes,
    },
  },
  {
    ExportUser: (call: ServerWritableStream<Buffer, Buffer>) => {
      for (const m of messages) call.write(m);
      call.end();
    },
  },
);
server.bindAsync(listen, ServerCredentials.createInsecure(), (err, port) => {
  if (err !== null) throw err;
  process.stdout.write(`ready ${port}\n`);
});
process.once('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
