import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { HealthDefinition } from 'nice-grpc-server-health';
import { ServerReflectionService } from 'nice-grpc-server-reflection';
import { describe, expect, it } from 'vitest';
import { ForgetUserRequest, PrivacyServiceDefinition } from '../../src/gen/lethe/privacy/v1/privacy.js';
import { RequestSchemas, guardGrpcJsService, guardTsProtoService, isUndecodable } from '../../src/server/request-guard.js';

const schemas = new RequestSchemas(readFileSync(new URL('../../src/gen/descriptor-set.binpb', import.meta.url)));
const privacy = guardTsProtoService(PrivacyServiceDefinition, { schemas, maxRequestBytes: 256 * 1024 });
const health = guardTsProtoService(HealthDefinition, { schemas, maxRequestBytes: 4096 });
const reflection = guardGrpcJsService(ServerReflectionService, { schemas, maxRequestBytes: 4096 });
const reflectionAlpha = guardGrpcJsService(ServerReflectionService, { schemas, maxRequestBytes: 4096, rename: (p) => p.replace('.v1.', '.v1alpha.') });

function timed<T>(fn: () => T): { value: T; ms: number } {
  const started = performance.now();
  const value = fn();
  return { value, ms: performance.now() - started };
}

describe('the request guard', () => {
  it('passes a valid request to the service decoder', () => {
    const bytes = ForgetUserRequest.encode({ userId: 'user-id-123', reason: 'r', idempotencyKey: 'k', requestedBy: '', includeRequest: false }).finish();
    expect(privacy.methods.forgetUser.requestType.decode(bytes)).toEqual({
      userId: 'user-id-123',
      reason: 'r',
      idempotencyKey: 'k',
      requestedBy: '',
      includeRequest: false,
    });
  });

  it("refuses the issue's 149-byte reflection request (string length 4,294,967,295) in well under a millisecond per try", () => {
    const payload = Buffer.concat([Buffer.from([(4 << 3) | 2, 0xff, 0xff, 0xff, 0xff, 0x0f]), Buffer.alloc(143, 0x61)]);
    const { value, ms } = timed(() => reflection.serverReflectionInfo.requestDeserialize(payload));
    expect(isUndecodable(value)).toBe(true);
    expect(ms).toBeLessThan(50);
  });

  it('publishes reflection under v1alpha too, guarded the same way', () => {
    expect(reflectionAlpha.serverReflectionInfo.path).toBe('/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo');
    expect(isUndecodable(reflectionAlpha.serverReflectionInfo.requestDeserialize(Buffer.from([0x22, 0xff, 0xff, 0xff, 0xff, 0x0f])))).toBe(true);
  });

  it('refuses what is over the size limit without reading it', () => {
    const big = Buffer.alloc(5000, 0x0a);
    const value = health.methods.check.requestType.decode(big);
    expect(isUndecodable(value)).toBe(true);
    expect(value).toMatchObject({ bytes: 5000, limit: 4096 });
  });

  it.each([
    ['an overlong varint', Buffer.concat([Buffer.from([0x18]), Buffer.alloc(20, 0xff)])],
    ['a wrong wire type for a string field', Buffer.from([0x0d, 1, 2, 3, 4])],
    ['invalid UTF-8', Buffer.from([0x0a, 2, 0xff, 0xfe])],
    ['deep groups', Buffer.alloc(3000, 0x4b)],
    ['field number zero', Buffer.from([0x02, 0x00])],
  ])('refuses %s', (_label, bytes) => {
    expect(isUndecodable(privacy.methods.forgetUser.requestType.decode(bytes))).toBe(true);
  });

  it('decodes or refuses 256 KiB of random bytes quickly, for every method', () => {
    const decoders = [
      ...Object.values(privacy.methods).map((m) => (b: Buffer) => m.requestType.decode(b)),
      ...Object.values(health.methods).map((m) => (b: Buffer) => m.requestType.decode(b)),
      (b: Buffer) => reflection.serverReflectionInfo.requestDeserialize(b),
    ];
    for (const decode of decoders) {
      for (let i = 0; i < 5; i++) {
        const { ms } = timed(() => decode(randomBytes(i === 0 ? 256 * 1024 : 1024)));
        expect(ms).toBeLessThan(100);
      }
    }
  });
});
