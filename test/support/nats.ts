import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './postgres.js';

/**
 * A throwaway nats-server with JetStream on a free loopback port, from the machine's binary
 * (Debian's nats-server, or LETHE_NATS_SERVER). Missing: skipped locally, a failure under CI=true.
 */

function findNatsServer(): string | undefined {
  const candidates = [process.env.LETHE_NATS_SERVER, '/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server'];
  try {
    candidates.push(execFileSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' }).trim());
  } catch {
    // not on PATH
  }
  return candidates.find((c): c is string => c !== undefined && c !== '' && existsSync(c));
}

export function requireNatsServer(): string | undefined {
  const bin = findNatsServer();
  if (bin === undefined) {
    if (process.env.CI === 'true')
      throw new Error('nats-server not found (CI=true forbids skipping): apt-get install -y nats-server, or set LETHE_NATS_SERVER');
    console.warn('nats-server not found: skipping the NATS suites (apt-get install -y nats-server, or set LETHE_NATS_SERVER)');
  }
  return bin;
}

export interface NatsServer {
  readonly url: string;
  readonly port: number;
  /** Stops the server, keeping its JetStream store. */
  stop(): Promise<void>;
  /** Starts it again on the same port and store. */
  start(): Promise<void>;
  destroy(): Promise<void>;
}

export interface NatsTlsServerOptions {
  readonly certFile: string;
  readonly keyFile: string;
  /** Client certificates must be signed by this CA (nats-server's `verify: true`). */
  readonly clientCaFile?: string;
}

/** `tls`: a `tls {}` block, so that every client must speak TLS (and with `clientCaFile`, present a certificate). */
export async function startNatsServer(bin: string, options: { tls?: NatsTlsServerOptions } = {}): Promise<NatsServer> {
  const storeDir = mkdtempSync(join(tmpdir(), 'lethe-nats-'));
  const port = await freePort();
  let child: ChildProcess | undefined;
  const kill = () => child?.kill('SIGKILL');
  const args = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir];
  const tls = options.tls;
  if (tls !== undefined) {
    const conf = join(storeDir, 'tls.conf');
    const lines = [`cert_file: ${JSON.stringify(tls.certFile)}`, `key_file: ${JSON.stringify(tls.keyFile)}`, 'timeout: 2'];
    if (tls.clientCaFile !== undefined) lines.push(`ca_file: ${JSON.stringify(tls.clientCaFile)}`, 'verify: true');
    writeFileSync(conf, `tls {\n  ${lines.join('\n  ')}\n}\n`);
    args.push('-c', conf);
  }

  const start = async () => {
    const c = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    process.once('exit', kill);
    let stderr = '';
    c.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    const deadline = Date.now() + 15_000;
    while (!(await accepts(port))) {
      if (c.exitCode !== null || Date.now() > deadline) throw new Error(`nats-server did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = async () => {
    const c = child;
    if (c === undefined || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    await exited;
    process.removeListener('exit', kill);
    child = undefined;
  };

  await start();
  return {
    url: `${tls === undefined ? 'nats' : 'tls'}://127.0.0.1:${port}`,
    port,
    stop,
    start,
    async destroy() {
      await stop();
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
