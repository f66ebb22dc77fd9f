import { execFile, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { promisify } from 'node:util';
import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintLocalToken } from '../../src/auth/local-key.js';
import { connectPrivacyService } from '../../src/client/privacy-client.js';
import { loadServerConfig } from '../../src/config/config.js';
import type { ClientTlsConfig } from '../../src/config/tls-config.js';
import { ConfigError } from '../../src/errors.js';
import { type RunningServer, startLetheServer } from '../../src/server/lethe-server.js';
import { channelCredentials } from '../../src/tls/client-credentials.js';
import { status } from '../support/grpc-status.js';
import { sample, scrape } from '../support/prometheus.js';
import { runCommand } from '../support/helm.js';
import { freePort } from '../support/postgres.js';
import { type CertFiles, type TestCa, createTestCa, findOpenssl } from '../support/tls.js';
import { type CapturedLogger, capturingLogger } from '../support/logs.js';
import { eventually, peerCertificateSerial } from '../support/tls-server.js';

/**
 * The PrivacyService over TLS and mutual TLS, with certificates made by openssl: who gets in,
 * who is refused at the handshake (and counted), the CLI with --tls-ca, certificate rotation
 * under a running server, and bad files at start-up.
 */

const LETHE = join(process.cwd(), 'bin', 'lethe.js');
const run = promisify(execFile);

interface Running {
  readonly server: RunningServer;
  readonly dataDir: string;
  readonly log: CapturedLogger;
  readonly address: string;
}

async function startTlsServer(env: Record<string, string>, flags: { tlsCert: string; tlsKey: string; tlsClientCa?: string }): Promise<Running> {
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-tls-'));
  const config = loadServerConfig(
    { LETHE_METRICS_LISTEN: '127.0.0.1:0', ...env },
    { demo: true, listen: '127.0.0.1:0', httpListen: '127.0.0.1:0', dataDir, ...flags },
  );
  const log = capturingLogger();
  const server = await startLetheServer(config, log.logger);
  return { server, dataDir, log, address: `127.0.0.1:${server.port}` };
}

async function exportAs(r: Running, tls: ClientTlsConfig | undefined, user = 'user-id-123') {
  const { client, close } = connectPrivacyService(r.address, await mintLocalToken(r.dataDir, user, 60), tls);
  try {
    let records = 0;
    for await (const m of client.exportUser({ userId: user, reason: '' })) if (m.part?.$case === 'batch') records += m.part.value.records.length;
    return records;
  } finally {
    close();
  }
}

const failures = async (r: Running, reason: string) =>
  sample((await scrape(r.server.metricsPort ?? 0)).body, 'lethe_tls_handshake_failures_total', { reason }) ?? 0;

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

describe('bad TLS files stop start-up, naming the file and never printing it', () => {
  let dir: string;
  let ca: TestCa;
  let a: CertFiles;
  let b: CertFiles;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'lethe-tls-bad-'));
    ca = createTestCa(dir, 'ca');
    a = ca.issue('a', { cn: 'localhost', dns: ['localhost'] });
    b = ca.issue('b', { cn: 'localhost', dns: ['localhost'] });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const startError = async (flags: { tlsCert: string; tlsKey: string; tlsClientCa?: string }): Promise<ConfigError> => {
    const dataDir = mkdtempSync(join(tmpdir(), 'lethe-tls-bad-data-'));
    try {
      const config = loadServerConfig({}, { listen: '127.0.0.1:0', dataDir, ...flags });
      await startLetheServer(config, capturingLogger().logger);
    } catch (err) {
      if (err instanceof ConfigError) return err;
      throw err;
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
    throw new Error('the server started');
  };

  it.each([
    ['a missing certificate', () => ({ tlsCert: join(dir, 'nope.crt'), tlsKey: a.keyFile }), () => `${join(dir, 'nope.crt')}: does not exist`],
    [
      "a key that is not the certificate's",
      () => ({ tlsCert: a.certFile, tlsKey: b.keyFile }),
      () => `${b.keyFile}: is not the private key of the certificate in ${a.certFile}`,
    ],
    ['a key file where the certificate should be', () => ({ tlsCert: a.keyFile, tlsKey: a.keyFile }), () => `${a.keyFile}: holds no PEM certificate`],
    ['a certificate where the key should be', () => ({ tlsCert: a.certFile, tlsKey: a.certFile }), () => `${a.certFile}: is not a PEM private key`],
    [
      'a client CA that is not a certificate',
      () => ({ tlsCert: a.certFile, tlsKey: a.keyFile, tlsClientCa: a.keyFile }),
      () => `${a.keyFile}: holds no PEM certificate`,
    ],
  ])('%s', async (_, flags, message) => {
    const err = await startError(flags());
    expect(err.message).toContain(message());
    // Never a file's contents: no base64 run, no PEM key block.
    expect(err.message).not.toMatch(/[A-Za-z0-9+/]{40}|PRIVATE KEY/);
  });

  it('`lethe serve` exits 2 with one line naming the file', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'lethe-tls-bad-cli-'));
    const e = await run('node', [LETHE, 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--tls-cert', a.certFile, '--tls-key', b.keyFile], {
      encoding: 'utf8',
    }).catch((x: { code: number; stderr: string }) => x);
    rmSync(dataDir, { recursive: true, force: true });
    expect((e as { code: number }).code).toBe(2);
    expect((e as { stderr: string }).stderr.trim()).toBe(
      `lethe: configuration: ${b.keyFile}: is not the private key of the certificate in ${a.certFile} (they do not match)`,
    );
  });
});

describe('a long-running client (the operator) and its rotated client certificate', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'lethe-tls-client-rotation-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('new connections present the new certificate once the files change', async () => {
    const ca = createTestCa(dir, 'ca');
    const server = ca.issue('server', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    const first = ca.issue('client-1', { cn: 'lethe-operator', client: true });
    const second = ca.issue('client-2', { cn: 'lethe-operator', client: true });
    const live = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') };
    copyFileSync(first.certFile, live.cert);
    copyFileSync(first.keyFile, live.key);
    // A TLS server that only records which client certificate each connection presented.
    const seen: string[] = [];
    const tlsServer = createTlsServer(
      {
        cert: readFileSync(server.certFile),
        key: readFileSync(server.keyFile),
        ca: readFileSync(ca.certFile),
        requestCert: true,
        rejectUnauthorized: true,
        ALPNProtocols: ['h2'],
      },
      (socket) => {
        seen.push(socket.getPeerCertificate().serialNumber.toUpperCase());
        socket.destroy();
      },
    );
    await new Promise<void>((res) => tlsServer.listen(0, '127.0.0.1', res));
    const port = (tlsServer.address() as { port: number }).port;
    const log = capturingLogger();
    const channel = createChannel(
      `localhost:${port}`,
      channelCredentials({ caFile: ca.certFile, certFile: live.cert, keyFile: live.key }, { intervalMs: 100, logger: log.logger }),
    );
    const health = createClient(HealthDefinition, channel);
    const attempt = () => health.check({ service: '' }, { signal: AbortSignal.timeout(500) }).catch(() => undefined);
    try {
      await eventually(
        async () => (await attempt(), seen),
        (s) => s.includes(first.serial),
        10_000,
      );
      expect(seen).toContain(first.serial);
      writeFileSync(live.key, readFileSync(second.keyFile));
      writeFileSync(live.cert, readFileSync(second.certFile));
      await eventually(
        async () => (await attempt(), seen),
        (s) => s.includes(second.serial),
        15_000,
      );
      expect(seen).toContain(second.serial);
      expect(log.lines().some((l) => l.msg === 'TLS client files reloaded: new connections use them')).toBe(true);
    } finally {
      channel.close();
      tlsServer.close();
    }
  });
});

describe('`lethe serve` as a process: certificate files rotated under it, default settings', () => {
  it('openssl s_client sees the new serial within the default check interval; the CLI keeps working', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lethe-tls-process-'));
    const ca = createTestCa(dir, 'ca');
    const first = ca.issue('server-1', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    const second = ca.issue('server-2', { cn: 'localhost', dns: ['localhost'], ips: ['127.0.0.1'] });
    const live = { cert: join(dir, 'server.crt'), key: join(dir, 'server.key') };
    copyFileSync(first.certFile, live.cert);
    copyFileSync(first.keyFile, live.key);
    const port = await freePort();
    const child = spawn(
      'node',
      [
        LETHE,
        'serve',
        '--demo',
        '--listen',
        `127.0.0.1:${port}`,
        '--http-listen',
        '127.0.0.1:0',
        '--data-dir',
        join(dir, 'data'),
        '--tls-cert',
        live.cert,
        '--tls-key',
        live.key,
      ],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { PATH: process.env.PATH, HOME: dir },
      },
    );
    let log = '';
    child.stdout?.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    const served = async () => {
      const o = await runCommand(findOpenssl(), [
        's_client',
        '-connect',
        `127.0.0.1:${port}`,
        '-servername',
        'localhost',
        '-CAfile',
        ca.certFile,
        '-verify_return_error',
      ]);
      const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(o.stdout)?.[0];
      return pem === undefined ? undefined : new X509Certificate(pem).serialNumber.toUpperCase();
    };
    try {
      await eventually(async () => log.includes('lethe PrivacyService listening'), Boolean, 60_000);
      expect(await served()).toBe(first.serial);
      // Rewritten in place, key first, as a cp of both files does.
      copyFileSync(second.keyFile, live.key);
      copyFileSync(second.certFile, live.cert);
      const rotatedAt = Date.now();
      expect(await eventually(served, (s) => s === second.serial, 30_000)).toBe(second.serial);
      expect(Date.now() - rotatedAt).toBeLessThan(15_000);
      const { stderr } = await run(
        'node',
        [LETHE, 'export', 'user-id-123', '-o', join(dir, 'u.json'), '--server', `localhost:${port}`, '--data-dir', join(dir, 'data'), '--tls-ca', ca.certFile],
        { encoding: 'utf8' },
      );
      expect(stderr).toContain('(verified)');
    } finally {
      child.kill('SIGTERM');
      await new Promise((res) => child.once('exit', res));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
