import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { connectPrivacyService } from '../../src/client/privacy-client.js';
import type { ClientTlsConfig } from '../../src/config/tls-config.js';
import { channelCredentials } from '../../src/tls/client-credentials.js';
import { status } from '../support/grpc-status.js';
import { runCommand } from '../support/helm.js';
import { type CertFiles, type TestCa, createTestCa, findOpenssl } from '../support/tls.js';
import { LETHE, type Running, eventually, exportAs, failures, peerCertificateSerial, run, startTlsServer } from '../support/tls-server.js';

/**
 * The PrivacyService over TLS, with certificates made by openssl: who gets in, who is refused at
 * the handshake (and counted), the plaintext health-only port, the CLI with --tls-ca, and
 * certificate rotation under a running server. Mutual TLS: tls-grpc-mutual.test.ts; certificate
 * files bad at start-up or rotated under a client or a process: tls-grpc-files.test.ts.
 */

describe('the PrivacyService over TLS', () => {
  let dir: string;
  let ca: TestCa;
  let other: TestCa;
  let first: CertFiles;
  let live: { cert: string; key: string };
  let r: Running;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lethe-tls-pki-'));
    ca = createTestCa(dir, 'ca');
    other = createTestCa(dir, 'other-ca');
    first = ca.issue('server-1', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    // The files the server watches: rotation rewrites them in place, as cert-manager does.
    live = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') };
    copyFileSync(first.certFile, live.cert);
    copyFileSync(first.keyFile, live.key);
    r = await startTlsServer({ LETHE_TLS_RELOAD_INTERVAL: '200ms', LETHE_GRPC_HEALTH_LISTEN: '127.0.0.1:0' }, { tlsCert: live.cert, tlsKey: live.key });
  });
  afterAll(async () => {
    await r?.server.stop(1_000);
    rmSync(dir, { recursive: true, force: true });
    if (r !== undefined) rmSync(r.dataDir, { recursive: true, force: true });
  });

  it('serves a client that trusts the CA, presenting the configured certificate', async () => {
    expect(await exportAs(r, { caFile: ca.certFile, certFile: undefined, keyFile: undefined })).toBeGreaterThan(0);
    expect(await peerCertificateSerial(r.server.port, { caFile: ca.certFile })).toBe(first.serial);
    const listening = r.log.lines().find((l) => l.msg === 'lethe PrivacyService listening');
    expect(listening?.tls).toMatchObject({ mutual: false, certificate: { serial: first.serial } });
  });

  it('refuses a plaintext client at the handshake, and counts it', async () => {
    const before = await failures(r, 'not_tls');
    const { client, close } = connectPrivacyService(r.address, await mintLocalToken(r.dataDir, 'user-id-123', 60));
    const got = await status(client.getPrivacyRequest({ id: '00000000-0000-0000-0000-000000000000' }, { signal: AbortSignal.timeout(5_000) }));
    close();
    expect(got.code).toBe('UNAVAILABLE');
    expect(
      await eventually(
        () => failures(r, 'not_tls'),
        (n) => n > before,
        2_000,
      ),
    ).toBeGreaterThan(before);
  });

  it('refuses TLS 1.1 (openssl s_client -tls1_1), and counts it', async () => {
    const before = await failures(r, 'protocol_version');
    const o = await runCommand(findOpenssl(), ['s_client', '-connect', r.address, '-servername', 'localhost', '-tls1_1', '-cipher', 'DEFAULT:@SECLEVEL=0']);
    expect(o.code).not.toBe(0);
    expect(o.stdout + o.stderr).toContain('alert protocol version');
    expect(
      await eventually(
        () => failures(r, 'protocol_version'),
        (n) => n > before,
        2_000,
      ),
    ).toBe(before + 1);
  });

  it('is refused by a client that does not trust its CA', async () => {
    const { client, close } = connectPrivacyService(r.address, 'x', { caFile: other.certFile, certFile: undefined, keyFile: undefined });
    const got = await status(client.getPrivacyRequest({ id: '00000000-0000-0000-0000-000000000000' }, { signal: AbortSignal.timeout(5_000) }));
    close();
    expect(got.code).toBe('UNAVAILABLE');
    // The refusals so far are logged with their reason and code, never the peer's address.
    const refused = r.log.lines().filter((l) => l.msg === 'TLS handshake refused');
    expect(refused.map((l) => l.reason)).toContain('not_tls');
    for (const l of refused) expect(Object.keys(l).sort()).toEqual(['code', 'hostname', 'level', 'msg', 'pid', 'reason', 'time']);
  });

  it('answers probes in plaintext on the health-only port, and serves nothing else there', async () => {
    const channel = createChannel(`127.0.0.1:${r.server.healthPort ?? 0}`);
    expect(await createClient(HealthDefinition, channel).check({ service: 'lethe.privacy.v1.PrivacyService' })).toEqual({ status: 1 });
    channel.close();
    const { client, close } = connectPrivacyService(`127.0.0.1:${r.server.healthPort ?? 0}`, await mintLocalToken(r.dataDir, 'user-id-123', 60));
    expect((await status(client.getPrivacyRequest({ id: '00000000-0000-0000-0000-000000000000' }))).code).toBe('UNIMPLEMENTED');
    close();
  });

  it('the CLI exports with --tls-ca', async () => {
    const out = join(r.dataDir, 'export.json');
    const { stderr } = await run(
      'node',
      [LETHE, 'export', 'user-id-123', '-o', out, '--server', `localhost:${r.server.port}`, '--data-dir', r.dataDir, '--tls-ca', ca.certFile],
      { encoding: 'utf8' },
    );
    expect(stderr).toMatch(/wrote .*export\.json: \d+ records, sha256 [0-9a-f]{64} \(verified\)/);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toMatchObject({ user_id: 'user-id-123' });
  });

  it('--tls-server-name: dialled by IP, the certificate checked against the name given', async () => {
    const named = ca.issue('named', { cn: 'lethe-server', dns: ['lethe-server.lethe.svc'] });
    const s = await startTlsServer({}, { tlsCert: named.certFile, tlsKey: named.keyFile });
    try {
      const args = ['requests', 'list', '--server', s.address, '--data-dir', s.dataDir, '--as', 'platform-owner-id', '--tls-ca', ca.certFile];
      const refused = await run('node', [LETHE, ...args], { encoding: 'utf8' }).catch((e: { code: number; stderr: string }) => e);
      expect((refused as { stderr: string }).stderr).toMatch(/^lethe: UNAVAILABLE: .*(IP: 127\.0\.0\.1 is not in the cert's list|does not match)/);
      const { stdout } = await run('node', [LETHE, ...args, '--tls-server-name', 'lethe-server.lethe.svc'], { encoding: 'utf8' });
      expect(stdout).toContain('ID');
    } finally {
      await s.server.stop(1_000);
      rmSync(s.dataDir, { recursive: true, force: true });
    }
  });

  it('the CLI without --tls-ca cannot reach it, and says so in one line', async () => {
    const r2 = await run('node', [LETHE, 'requests', 'list', '--server', r.address, '--data-dir', r.dataDir, '--as', 'platform-owner-id'], {
      encoding: 'utf8',
    }).catch((e: { code: number; stderr: string }) => e);
    expect((r2 as { code: number }).code).toBe(1);
    expect((r2 as { stderr: string }).stderr).toMatch(/^lethe: UNAVAILABLE: /);
  });

  it('a client certificate without a CA, or a CA file that is missing, stops the client naming the setting or file', () => {
    expect(() => channelCredentials({ caFile: join(dir, 'missing.crt'), certFile: undefined, keyFile: undefined })).toThrow(
      `${join(dir, 'missing.crt')}: does not exist`,
    );
    expect(() => channelCredentials({ caFile: first.keyFile, certFile: undefined, keyFile: undefined })).toThrow('holds no PEM certificate');
  });

  // Last in this suite: it changes the server's certificate.
  it('rotates: new connections get the new certificate within the interval; open calls and connections carry on', async () => {
    const tls: ClientTlsConfig = { caFile: ca.certFile, certFile: undefined, keyFile: undefined };
    // A long-lived streaming call (Health/Watch never ends by itself) on a connection made before the rotation.
    const channel = createChannel(r.address, channelCredentials(tls));
    const health = createClient(HealthDefinition, channel);
    const watch = health.watch({ service: '' })[Symbol.asyncIterator]();
    expect((await watch.next()).value).toMatchObject({ status: 1 });
    let ended: unknown;
    const next = watch.next().then(
      (v) => (ended = v),
      (err: unknown) => (ended = err),
    );

    // A broken write first (the key of another certificate): refused, the old certificate stays.
    const second = ca.issue('server-2', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    writeFileSync(live.cert, readFileSync(second.certFile));
    await eventually(
      async () => r.log.lines().some((l) => l.msg === 'TLS files changed but cannot be used: still using the previous server certificate'),
      Boolean,
      3_000,
    );
    const refused = r.log.lines().find((l) => l.msg === 'TLS files changed but cannot be used: still using the previous server certificate');
    expect(String(refused?.problem)).toContain(`${live.key}: is not the private key of the certificate in ${live.cert}`);
    expect(await peerCertificateSerial(r.server.port, { caFile: ca.certFile })).toBe(first.serial);

    // Then the key: the pair is complete, and the next check takes it.
    const rotatedAt = Date.now();
    writeFileSync(live.key, readFileSync(second.keyFile));
    const seen = await eventually(
      () => peerCertificateSerial(r.server.port, { caFile: ca.certFile }),
      (s) => s === second.serial,
      5_000,
    );
    expect(seen).toBe(second.serial);
    expect(Date.now() - rotatedAt).toBeLessThan(2_000);
    expect(r.log.lines().some((l) => l.msg === 'TLS certificate reloaded: new connections use it')).toBe(true);

    // The call opened before the rotation is still open, and its connection still serves calls.
    await new Promise((res) => setTimeout(res, 300));
    expect(ended).toBeUndefined();
    expect(await health.check({ service: '' })).toMatchObject({ status: 1 });
    expect(await exportAs(r, tls)).toBeGreaterThan(0);
    channel.close();
    void next;
  });
});
