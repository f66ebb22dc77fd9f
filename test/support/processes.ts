import { type ChildProcess, spawn } from 'node:child_process';
import { freePort } from './postgres.js';

/**
 * The child processes of the test control plane (test/support/kube-apiserver.ts): spawned with a
 * bounded tail of their output, waited for until ready (failing with that tail), and terminated.
 */

/** How much of a process's output is kept for the error that says why it failed. */
const STDERR_TAIL = 16_000;

export interface Logged {
  readonly child: ChildProcess;
  stderr(): string;
  /** Set when the process could not be spawned (no 'exit' event follows). */
  spawnError(): Error | undefined;
}

export function spawnLogged(bin: string, args: string[]): Logged {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let tail = '';
  let failed: Error | undefined;
  const keep = (d: Buffer) => {
    tail = (tail + d.toString()).slice(-STDERR_TAIL);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  child.on('error', (e) => {
    failed = e;
  });
  return { child, stderr: () => tail, spawnError: () => failed };
}

export function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export async function waitUntil(name: string, proc: Logged, timeoutMs: number, ready: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const spawnError = proc.spawnError();
    if (spawnError !== undefined) throw new Error(`${name} could not be started: ${spawnError.message}`);
    if (hasExited(proc.child)) {
      throw new Error(`${name} exited (${proc.child.exitCode ?? proc.child.signalCode}) before it was ready:\n${proc.stderr()}`);
    }
    try {
      if (await ready()) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${name} was not ready within ${timeoutMs} ms:\n${proc.stderr()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** SIGTERM, SIGKILL after graceMs, and gives up waiting 5 s after that. */
export async function terminate(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.pid === undefined || hasExited(child)) return;
  let timer: NodeJS.Timeout | undefined;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const gaveUp = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      child.kill('SIGKILL');
      timer = setTimeout(resolve, 5_000);
    }, graceMs);
  });
  child.kill('SIGTERM');
  await Promise.race([exited, gaveUp]);
  clearTimeout(timer);
}

export async function freePortExcept(taken: readonly number[]): Promise<number> {
  for (let tries = 0; tries < 50; tries++) {
    const p = await freePort();
    if (!taken.includes(p)) return p;
  }
  throw new Error('no free loopback port');
}
