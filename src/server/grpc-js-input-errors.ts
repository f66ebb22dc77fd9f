import { createRequire } from 'node:module';
import { Status } from 'nice-grpc';

/**
 * Two kinds of bad input that grpc-js (1.14) answers INTERNAL itself, before any handler,
 * interceptor or middleware of ours runs: a `grpc-timeout` header it cannot parse, and a body
 * declared compressed (`grpc-encoding: gzip`/`deflate`) that does not decompress. Both are the
 * caller's fault: INVALID_ARGUMENT. grpc-js offers no hook for either (its server interceptors
 * wrap the call after the base call has already answered), so the two methods of its base call
 * are wrapped here, once per process; `useInvalidArgumentForBadInput` checks that they still
 * exist and fails start-up when a grpc-js upgrade moved them (the fuzz test would catch a change
 * of behaviour). These answers are not seen by the logging middleware: not logged, not counted.
 */

interface StatusObject {
  code: number;
  details: string;
  metadata?: unknown;
}

interface BaseCall {
  sendStatus(status: StatusObject): void;
  handleTimeoutHeader(header: unknown): void;
  decompressMessage(message: Buffer, encoding: string): Buffer | Promise<Buffer>;
}

// The same pattern grpc-js accepts (server-interceptors.js DEADLINE_REGEX).
const DEADLINE = /(\d{1,8})\s*([HMSmun])/;
let installed = false;

export function useInvalidArgumentForBadInput(): void {
  if (installed) return;
  const require = createRequire(import.meta.url);
  const { BaseServerInterceptingCall } = require('@grpc/grpc-js/build/src/server-interceptors.js') as { BaseServerInterceptingCall?: { prototype: BaseCall } };
  const proto = BaseServerInterceptingCall?.prototype;
  if (proto === undefined || typeof proto.handleTimeoutHeader !== 'function' || typeof proto.decompressMessage !== 'function') {
    throw new Error(
      '@grpc/grpc-js changed: BaseServerInterceptingCall.handleTimeoutHeader/decompressMessage are gone; review src/server/grpc-js-input-errors.ts',
    );
  }
  const handleTimeoutHeader = proto.handleTimeoutHeader;
  const decompressMessage = proto.decompressMessage;

  proto.handleTimeoutHeader = function (this: BaseCall, header: unknown) {
    if (DEADLINE.exec(String(header)) !== null) return handleTimeoutHeader.call(this, header);
    // As grpc-js does: after the constructor has finished.
    process.nextTick(() => this.sendStatus({ code: Status.INVALID_ARGUMENT, details: 'grpc-timeout is not valid', metadata: null }));
  };

  proto.decompressMessage = function (this: BaseCall, message: Buffer, encoding: string) {
    const result = decompressMessage.call(this, message, encoding);
    if (!(result instanceof Promise)) return result;
    return result.catch((err: unknown) => {
      const status = err as StatusObject;
      throw status.code === Status.INTERNAL ? { code: Status.INVALID_ARGUMENT, details: 'Request message could not be decompressed' } : err;
    });
  };
  installed = true;
}
