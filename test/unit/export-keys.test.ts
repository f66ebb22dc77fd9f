import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ensureLocalExportKey, loadExportSigningKey, loadExportVerifyKey } from '../../src/auth/export-keys.js';
import { openExportRequest, sealExportRequest } from '../../src/events/export-protocol.js';

describe('the export key', () => {
  it('is made once in the data directory (private 0600), its public half written beside it, and the pair signs and verifies', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lethe-export-key-'));
    const first = await ensureLocalExportKey(dir);
    const privatePem = readFileSync(join(dir, 'export-signing-key.pem'), 'utf8');
    expect(statSync(join(dir, 'export-signing-key.pem')).mode & 0o777).toBe(0o600);
    const second = await ensureLocalExportKey(dir);
    expect(readFileSync(join(dir, 'export-signing-key.pem'), 'utf8')).toBe(privatePem);
    expect(second.publicKeyFile).toBe(first.publicKeyFile);

    const verifyKey = await loadExportVerifyKey(first.publicKeyFile, 'test');
    const { token } = await sealExportRequest(second.signingKey, { subjectId: 's-1', requestId: 'r-1', service: 'orders', reply: '_INBOX.x' });
    await expect(openExportRequest(token, verifyKey, 'orders')).resolves.toMatchObject({ subjectId: 's-1', requestId: 'r-1', reply: '_INBOX.x' });
    // Signed for orders: no other service accepts it.
    await expect(openExportRequest(token, verifyKey, 'billing')).rejects.toThrow();
  });

  it('names the file and the command that makes a right one when a key file is wrong', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lethe-export-key-'));
    const bad = join(dir, 'bad.pem');
    writeFileSync(bad, 'not a key');
    await expect(loadExportSigningKey(bad, 'LETHE_EXPORT_SIGNING_KEY_FILE')).rejects.toThrow(
      `${bad} is not an Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519 -out export-signing-key.pem)`,
    );
    await expect(loadExportVerifyKey(join(dir, 'missing.pem'), 'LETHE_EXPORT_VERIFY_KEY_FILE')).rejects.toThrow(
      `cannot read ${join(dir, 'missing.pem')} (ENOENT)`,
    );
  });
});
