import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LetheProcess, runLethe, startLetheProcess } from '../support/lethe-process.js';

/**
 * `lethe export` when a downstream service's part is missing: a server that must ask "orders"
 * but has no NATS to ask it with. The document is partial, and says so.
 */

describe('lethe export of a partial document', () => {
  let dataDir: string;
  let server: LetheProcess;

  const lethe = (...args: string[]) => runLethe(server, dataDir, args);

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'lethe-partial-'));
    server = await startLetheProcess({ dataDir, env: { LETHE_DOWNSTREAM_SERVICES: 'orders' } });
  });

  afterAll(() => {
    server?.process.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('fails with a clear message and keeps no file, naming the service and why', async () => {
    const out = join(dataDir, 'export.json');
    const r = await lethe('export', 'user-id-123', '-o', out);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('orders: FAILED after 0 records: NATS is not configured (LETHE_NATS_URL): the service was not asked\n');
    expect(r.stderr).toContain(
      'lethe: the export is partial: orders did not contribute all of their data (see above); run it again, or pass --allow-partial to keep the document as it is',
    );
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.partial`)).toBe(false);
  });

  it('keeps it with --allow-partial: the document says which part is missing, and the summary says PARTIAL', async () => {
    const out = join(dataDir, 'partial.json');
    const r = await lethe('export', 'user-id-123', '-o', out, '--allow-partial');
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/wrote .*partial\.json: 59 records, PARTIAL \(missing: orders\), sha256 [0-9a-f]{64} \(verified\)/);
    const doc = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>;
    expect(doc.downstream).toEqual({ orders: {} });
    expect(doc.downstream_export).toEqual({
      orders: { status: 'failed', records: 0, error: 'NATS is not configured (LETHE_NATS_URL): the service was not asked' },
    });
    expect(doc.user_id).toBe('user-id-123');
  });
});
