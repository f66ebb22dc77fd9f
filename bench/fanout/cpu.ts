import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** CPU accounting from /proc (Linux), in seconds; clock ticks are 1/100 s. */

function statFields(pid: number): string[] | undefined {
  try {
    // Fields after the command name: [0] state, [1] ppid, … [11] utime, [12] stime, [13] cutime, [14] cstime.
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ');
  } catch {
    return undefined; // gone
  }
}

/** User and system CPU time of a process (0 when it is gone); with `reaped`, also that of its exited children. */
export function cpuSeconds(pid: number, reaped = false): number {
  const f = statFields(pid);
  if (f === undefined) return 0;
  const ticks = Number(f[11]) + Number(f[12]) + (reaped ? Number(f[13]) + Number(f[14]) : 0);
  return ticks / 100;
}

function pids(): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

/** A process and its children, living and exited (the PostgreSQL postmaster and its backends). */
export function treeCpuSeconds(pid: number): number {
  let total = cpuSeconds(pid, true);
  for (const p of pids()) if (statFields(p)?.[1] === String(pid)) total += cpuSeconds(p, true);
  return total;
}

/** The postmaster of a cluster, from its data directory. */
export function postmasterPid(dataDir: string): number {
  return Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
}

/** The first process whose command line holds every one of `parts`, or 0. */
export function findPid(parts: readonly string[]): number {
  for (const p of pids()) {
    try {
      const args = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (parts.every((part) => args.includes(part))) return p;
    } catch {
      // gone
    }
  }
  return 0;
}

/** The machine's busy and total CPU ticks, from /proc/stat (iowait counts as idle). */
function machineCpu(): { busy: number; total: number } {
  const f = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

/** CPU seconds this (the bench) process used. */
export function benchCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** CPU used from now until read(): by each named reader's process, and the machine's busy share. */
export function cpuMetersOf(meters: ReadonlyArray<readonly [string, () => number]>): {
  read(): { perProcess: Array<[string, number]>; machineBusyPct: number };
} {
  const before = meters.map(([, read]) => read());
  const machineBefore = machineCpu();
  return {
    read() {
      const after = machineCpu();
      return {
        perProcess: meters.map(([name, read], i) => [name, read() - (before[i] ?? 0)]),
        machineBusyPct: (100 * (after.busy - machineBefore.busy)) / (after.total - machineBefore.total),
      };
    },
  };
}

/** cpuMetersOf the server, PostgreSQL (the postmaster and its backends) and this process. */
export function cpuMeters(serverPid: number, pgPid: number): ReturnType<typeof cpuMetersOf> {
  return cpuMetersOf([
    ['server', () => cpuSeconds(serverPid)],
    ['postgres', () => treeCpuSeconds(pgPid)],
    ['bench', benchCpuSeconds],
  ]);
}
