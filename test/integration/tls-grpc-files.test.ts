import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadServerConfig } from '../../src/config/config.js';
import { ConfigError } from '../../src/errors.js';
import { startLetheServer } from '../../src/server/lethe-server.js';
import { channelCredentials } from '../../src/tls/client-credentials.js';
import { runCommand } from '../support/helm.js';
import { freePort } from '../support/postgres.js';
import { type CertFiles, type TestCa, createTestCa, findOpenssl } from '../support/tls.js';
import { capturingLogger } from '../support/logs.js';
import { LETHE, eventually, run } from '../support/tls-server.js';

/**
 * Certificate files under the PrivacyService and its clients: bad ones stop start-up (naming the
 * file, never printing it); rotated ones reach a long-running client (the operator) and a
 * `lethe serve` process with its default settings.
 */

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
