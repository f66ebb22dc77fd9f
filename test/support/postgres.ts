import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

/**
 * A throwaway PostgreSQL cluster from the machine's own binaries, on a free loopback port,
 * for integration tests. Found through LETHE_PG_BIN, `pg_config --bindir` or
 * /usr/lib/postgresql/<version>/bin. When none is found the suite is skipped, except under
 * CI=true, where it fails: CI must never pass without having tested against PostgreSQL.
 */

function findPostgresBin(): string | undefined {
  const candidates: string[] = [];
  if (process.env.LETHE_PG_BIN) candidates.push(process.env.LETHE_PG_BIN);
  try {
    candidates.push(execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  } catch {
    // not on PATH
  }
  if (existsSync('/usr/lib/postgresql')) {
    for (const v of readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a))) candidates.push(`/usr/lib/postgresql/${v}/bin`);
  }
  return candidates.find((dir) => existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'postgres')));
}

export function requirePostgres(): string | undefined {
  const bin = findPostgresBin();
  if (bin === undefined) {
    if (process.env.CI === 'true') {
      throw new Error('PostgreSQL binaries not found (CI=true forbids skipping): apt-get install -y postgresql, or set LETHE_PG_BIN');
    }
    console.warn('PostgreSQL binaries not found: skipping the PostgreSQL suites (apt-get install -y postgresql, or set LETHE_PG_BIN)');
  }
  return bin;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface PostgresCluster {
  readonly port: number;
  readonly dataDir: string;
  /** A URL for a fresh, empty database on this cluster. */
  createDatabase(name?: string): Promise<string>;
  /** Stops the server, keeping its data (for "the database went away" tests). */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** SIGSTOP to the postmaster and every backend: a database that accepts TCP connections and answers nothing (a stall). */
  pause(): void;
  /** SIGCONT to the same processes. */
  resume(): void;
  destroy(): Promise<void>;
}

let dbSeq = 0;

/**
 * `tls`: serve TLS (ssl=on) with this certificate and key; plaintext connections stay allowed.
 * `settings`: more server settings (`-c name=value`), e.g. pg_stat_statements for a profile.
 */
export async function startPostgres(
  bin: string,
  options: { tls?: { certFile: string; keyFile: string }; settings?: Readonly<Record<string, string>> } = {},
): Promise<PostgresCluster> {
  const root = process.getuid?.() === 0;
  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-pg-'));
  // initdb refuses to run as root: run the server as the postgres user then.
  const asPg = (cmd: string, args: string[]): [string, string[]] => (root ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]);
  if (root) chownSync(dataDir, uidOf('postgres'), gidOf('postgres'));
  const [initCmd, initArgs] = asPg(join(bin, 'initdb'), ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  execFileSync(initCmd, initArgs, { stdio: 'ignore' });
  const tlsArgs: string[] = [];
  if (options.tls !== undefined) {
    // PostgreSQL refuses a key file that others can read or that it does not own.
    for (const [from, name] of [
      [options.tls.certFile, 'server.crt'],
      [options.tls.keyFile, 'server.key'],
    ] as const) {
      copyFileSync(from, join(dataDir, name));
      chmodSync(join(dataDir, name), 0o600);
      if (root) chownSync(join(dataDir, name), uidOf('postgres'), gidOf('postgres'));
    }
    tlsArgs.push('-c', 'ssl=on', '-c', `ssl_cert_file=${join(dataDir, 'server.crt')}`, '-c', `ssl_key_file=${join(dataDir, 'server.key')}`);
  }
  const port = await freePort();
  let child: ChildProcess | undefined;

  const start = async () => {
    const [cmd, args] = asPg(join(bin, 'postgres'), [
      '-D',
      dataDir,
      '-p',
      String(port),
      '-h',
      '127.0.0.1',
      '-k',
      dataDir,
      '-c',
      'fsync=off',
      '-c',
      'synchronous_commit=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'max_connections=200',
      ...tlsArgs,
      ...Object.entries(options.settings ?? {}).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
    ]);
    child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    // A test run that dies must not leave a server behind.
    process.once('exit', killPostmaster);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    const deadline = Date.now() + 20_000;
    for (;;) {
      const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
      try {
        await c.connect();
        await c.end();
        return;
      } catch {
        await c.end().catch(() => undefined);
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`PostgreSQL did not start: ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };

  function killPostmaster() {
    try {
      const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      if (Number.isInteger(pid) && pid > 0) process.kill(pid, 'SIGQUIT');
    } catch {
      // already gone
    }
  }

  const stop = async () => {
    const c = child;
    if (c === undefined || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    // Signal the postmaster itself (runuser does not forward signals): SIGINT is a fast shutdown.
    const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    process.kill(Number.isInteger(pid) && pid > 0 ? pid : (c.pid ?? 0), 'SIGINT');
    await exited;
    process.removeListener('exit', killPostmaster);
    child = undefined;
  };

  // The postmaster and its children (backends, background workers), as pause() found them.
  let paused: number[] = [];
  const postmasterPid = () => Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);

  await start();
  return {
    port,
    dataDir,
    pause() {
      const pid = postmasterPid();
      const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
        .split('\n')
        .map(Number)
        .filter((n) => n > 0);
      paused = [pid, ...children];
      for (const p of paused) process.kill(p, 'SIGSTOP');
    },
    resume() {
      // runuser (when run as root) stops itself when its child stops: continue it too.
      for (const p of [...paused, ...(child?.pid === undefined ? [] : [child.pid])]) process.kill(p, 'SIGCONT');
      paused = [];
    },
    async createDatabase(name) {
      const db = name ?? `lethe_test_${process.pid}_${++dbSeq}`;
      const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
      await c.connect();
      await c.query(`CREATE DATABASE "${db}"`);
      await c.end();
      return `postgresql://postgres@127.0.0.1:${port}/${db}`;
    },
    stop,
    start,
    async destroy() {
      await stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

function uidOf(user: string): number {
  return Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
}
function gidOf(user: string): number {
  return Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
}

/** Runs one statement on a connection of its own (the database at `url()` when called) and returns its rows. */
export function sqlOn(url: () => string) {
  return async <R extends pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> => {
    const c = new pg.Client({ connectionString: url() });
    await c.connect();
    try {
      return (await c.query<R>(text, params)).rows;
    } finally {
      await c.end();
    }
  };
}
