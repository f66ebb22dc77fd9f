import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { connectPrivacyService } from '../../src/client/privacy-client.js';
import type { ClientTlsConfig } from '../../src/config/tls-config.js';
import { status } from '../support/grpc-status.js';
import { runCommand } from '../support/helm.js';
import { type CertFiles, type TestCa, createTestCa, findOpenssl } from '../support/tls.js';
import { LETHE, type Running, eventually, failures, run, startTlsServer } from '../support/tls-server.js';

/**
 * The PrivacyService with mutual TLS, with certificates made by openssl: a client certificate the
 * client CA signed gets in; none, or one from another CA, is refused at the handshake and
 * counted; openssl s_client and the CLI.
 */

describe('the PrivacyService with mutual TLS', () => {
  let dir: string;
  let ca: TestCa;
  let clients: TestCa;
  let rogue: TestCa;
  let client: CertFiles;
  let rogueClient: CertFiles;
  let r: Running;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lethe-mtls-pki-'));
    ca = createTestCa(dir, 'ca');
    clients = createTestCa(dir, 'clients-ca');
    rogue = createTestCa(dir, 'rogue-ca');
    const server = ca.issue('server', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    client = clients.issue('operator', { cn: 'lethe-operator', client: true });
    rogueClient = rogue.issue('intruder', { cn: 'lethe-operator', client: true });
    r = await startTlsServer({ LETHE_TLS_CLIENT_CA: clients.certFile }, { tlsCert: server.certFile, tlsKey: server.keyFile });
  });
  afterAll(async () => {
    await r?.server.stop(1_000);
    rmSync(dir, { recursive: true, force: true });
    if (r !== undefined) rmSync(r.dataDir, { recursive: true, force: true });
  });

  const call = async (tls: ClientTlsConfig) => {
    const { client: c, close } = connectPrivacyService(r.address, await mintLocalToken(r.dataDir, 'platform-owner-id', 60), tls);
    try {
      return await status(
        c.listPrivacyRequests({ subjectId: '', state: 0, overdueOnly: false, pageSize: 10, pageToken: '' }, { signal: AbortSignal.timeout(5_000) }),
      );
    } finally {
      close();
    }
  };

  it('serves a client whose certificate the client CA signed', async () => {
    expect(await call({ caFile: ca.certFile, certFile: client.certFile, keyFile: client.keyFile })).toEqual({ code: 'OK', details: '' });
    expect(r.log.lines().find((l) => l.msg === 'lethe PrivacyService listening')?.tls).toMatchObject({ mutual: true });
  });

  it('refuses a client without a certificate at the handshake, and counts it', async () => {
    expect((await call({ caFile: ca.certFile, certFile: undefined, keyFile: undefined })).code).toBe('UNAVAILABLE');
    expect(
      await eventually(
        () => failures(r, 'no_client_certificate'),
        (n) => n > 0,
        2_000,
      ),
    ).toBeGreaterThan(0);
  });

  it('refuses a certificate from another CA, and counts it', async () => {
    expect((await call({ caFile: ca.certFile, certFile: rogueClient.certFile, keyFile: rogueClient.keyFile })).code).toBe('UNAVAILABLE');
    expect(
      await eventually(
        () => failures(r, 'untrusted_client_certificate'),
        (n) => n > 0,
        2_000,
      ),
    ).toBeGreaterThan(0);
    // Logged without the client certificate's subject (which can name a person).
    expect(r.log.text()).not.toContain('lethe-operator');
  });

  it('openssl s_client: the handshake completes with the client certificate and is refused without', async () => {
    const sClient = async (extra: string[]) => {
      const o = await runCommand(findOpenssl(), [
        's_client',
        '-connect',
        r.address,
        '-servername',
        'localhost',
        '-CAfile',
        ca.certFile,
        '-alpn',
        'h2',
        '-verify_return_error',
        ...extra,
      ]);
      return { ok: o.code === 0, out: o.stdout + o.stderr };
    };
    const withCert = await sClient(['-cert', client.certFile, '-key', client.keyFile]);
    expect(withCert.out).toContain('Verify return code: 0 (ok)');
    expect(withCert.out).toMatch(/New, TLSv1\.[23], Cipher is/);
    // In TLS 1.2 the client's certificate is part of the handshake, so its refusal shows there
    // (in TLS 1.3 the server's alert comes after the client considers the handshake done).
    const without = await sClient(['-tls1_2']);
    expect(without.ok).toBe(false);
    expect(without.out).toMatch(/alert handshake failure|alert certificate required/);
    expect(without.out).not.toContain('Verify return code: 0 (ok)\n---\n');
  });

  it('the CLI with --tls-ca, --tls-cert and --tls-key', async () => {
    const { stdout } = await run(
      'node',
      [
        LETHE,
        'requests',
        'list',
        '--server',
        `localhost:${r.server.port}`,
        '--data-dir',
        r.dataDir,
        '--as',
        'platform-owner-id',
        '--tls-ca',
        ca.certFile,
        '--tls-cert',
        client.certFile,
        '--tls-key',
        client.keyFile,
      ],
      { encoding: 'utf8' },
    );
    expect(stdout).toContain('ID');
  });
});
