import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

/**
 * `lethe <command>` in a child process of its own (`node --import tsx src/cli/main.ts`), as in
 * production. Its environment is the bench's without any LETHE_* or DATABASE_URL, plus `env`.
 * Its output goes to the bench's stderr, each line prefixed with `[name]`; the last lines are
 * kept for the error of a process that exits too early.
 */
export class LetheProcess {
  private readonly child: ChildProcess;
  private readonly recent: string[] = [];
  private stopping = false;
  private readonly exit: Promise<void>;

  constructor(
    readonly name: string,
    args: readonly string[],
    env: Readonly<Record<string, string>>,
    nodeFlags: readonly string[] = [],
  ) {
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LETHE_') && k !== 'DATABASE_URL'));
    this.child = spawn(process.execPath, [...nodeFlags, '--import', 'tsx', MAIN, ...args], {
      cwd: ROOT,
      env: { ...inherited, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      if (stream === null) continue;
      createInterface({ input: stream }).on('line', (line) => {
        this.recent.push(line);
        if (this.recent.length > 20) this.recent.shift();
        process.stderr.write(`[${name}] ${line}\n`);
      });
    }
    this.exit = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        if (!this.stopping) process.stderr.write(`[${name}] exited unexpectedly (${signal ?? `code ${code}`})\n`);
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Polls `probe` every 100 ms until it holds; fails when the process exits or after `timeoutMs`. */
  async waitReady(probe: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) throw new Error(`${this.name} exited before it was ready:\n${this.recent.join('\n')}`);
      if (await probe().catch(() => false)) return;
      if (Date.now() > deadline) throw new Error(`${this.name} was not ready within ${timeoutMs / 1000} s:\n${this.recent.join('\n')}`);
      await sleep(100);
    }
  }

  /** SIGTERM (the ordered shutdown: the sidecar drains), SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exit;
    clearTimeout(timer);
  }
}

/**
 * Whether a Lethe server answers SERVING on the gRPC health service: its readiness probe for
 * `waitReady` (its "listening" line is logged at info, below the benches' LETHE_LOG_LEVEL=warn).
 */
export async function grpcServing(address: string): Promise<boolean> {
  const channel = createChannel(address);
  try {
    return (await createClient(HealthDefinition, channel).check({ service: '' }, { signal: AbortSignal.timeout(1_000) })).status === 1;
  } finally {
    channel.close();
  }
}
