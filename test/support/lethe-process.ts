import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { vi } from 'vitest';
import { freePort } from './postgres.js';

/** `lethe serve` as a process of its own (the built bin/lethe.js), for crash and multi-replica tests. */
export interface LetheProcess {
  readonly address: string;
  readonly process: ChildProcess;
  log(): string;
}

const LETHE = join(process.cwd(), 'bin', 'lethe.js');

export async function startLetheProcess(opts: { dataDir: string; env: Record<string, string> }): Promise<LetheProcess> {
  const address = `127.0.0.1:${await freePort()}`;
  const child = spawn('node', [LETHE, 'serve', '--demo', '--listen', address, '--data-dir', opts.dataDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LETHE_LOG_LEVEL: 'info', LETHE_HTTP_LISTEN: '127.0.0.1:0', ...opts.env },
  });
  let log = '';
  child.stdout?.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  await vi.waitFor(
    () => {
      if (child.exitCode !== null) throw new Error(`lethe serve exited:\n${log}`);
      if (!log.includes('lethe PrivacyService listening')) throw new Error('not listening yet');
    },
    { timeout: 60_000, interval: 100 },
  );
  return { address, process: child, log: () => log };
}

/** Runs the built `lethe` command against a server: its exit code and both outputs, never a throw. */
export async function runLethe(server: { address: string }, dataDir: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)('node', [LETHE, ...args, '--server', server.address, '--data-dir', dataDir], { encoding: 'utf8' });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
