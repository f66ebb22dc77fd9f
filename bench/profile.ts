import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';

/**
 * Profiling for the benches that run a server process, switched on by LETHE_BENCH_PROFILE=DIR:
 * the server runs with `node --cpu-prof` (profiles written to DIR when it stops), the
 * PostgreSQL cluster with pg_stat_statements, and `profileSummary` writes the top statements
 * and the top functions (self time) to DIR and stderr.
 */

const dir = (): string | undefined => process.env.LETHE_BENCH_PROFILE || undefined;

/** Node flags for the server process. */
export function serverProfileArgs(): string[] {
  const d = dir();
  if (d === undefined) return [];
  mkdirSync(d, { recursive: true });
  return ['--cpu-prof', '--cpu-prof-dir', d];
}

/** PostgreSQL settings for the bench cluster. */
export function clusterProfileSettings(): Record<string, string> {
  return dir() === undefined ? {} : { shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track': 'all' };
}

/** Starts counting statements from now (call after seeding). */
export async function resetStatementStats(url: string): Promise<void> {
  if (dir() === undefined) return;
  await onClient(url, async (c) => {
    await c.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    await c.query('SELECT pg_stat_statements_reset()');
  });
}

/** The top statements by total execution time since resetStatementStats. */
export async function writeStatementStats(url: string): Promise<void> {
  const d = dir();
  if (d === undefined) return;
  const rows = await onClient(url, async (c) => {
    // A bench that did not reset the counts reports them since the server started.
    await c.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    const r = await c.query<{ calls: string; total_ms: number; mean_ms: number; rows: string; query: string }>(
      `SELECT calls, total_exec_time AS total_ms, mean_exec_time AS mean_ms, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS query
       FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 30`,
    );
    return r.rows;
  });
  const text = rows
    .map((r) => `${r.total_ms.toFixed(1).padStart(10)} ms ${String(r.calls).padStart(7)} calls ${r.mean_ms.toFixed(3).padStart(9)} ms/call  ${r.query}`)
    .join('\n');
  writeFileSync(join(d, 'pg_stat_statements.txt'), `${text}\n`);
  console.error(`pg_stat_statements (top by total time):\n${text}`);
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

/** The functions with the most self time in each CPU profile the server wrote. */
export function writeCpuProfileSummary(top = 30): void {
  const d = dir();
  if (d === undefined) return;
  for (const f of readdirSync(d).filter((n) => n.endsWith('.cpuprofile'))) {
    const p = JSON.parse(readFileSync(join(d, f), 'utf8')) as { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] };
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const self = new Map<string, number>();
    p.samples.forEach((id, i) => {
      const n = byId.get(id);
      if (n === undefined) return;
      const cf = n.callFrame;
      const key = `${cf.functionName || '(anonymous)'} ${cf.url.replace(/^.*\/(node_modules|src)\//, '$1/')}:${cf.lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
    });
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    const line = ([k, ms]: [string, number]) => `${ms.toFixed(0).padStart(8)} ms ${((100 * ms) / total).toFixed(1).padStart(5)}%  ${k}`;
    const lines = [...self.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(line);
    // Self time per package (node_modules/NAME), per source file of Lethe, and native/Node internals.
    const byPackage = new Map<string, number>();
    for (const [k, ms] of self) {
      const where = k.slice(k.lastIndexOf(' ') + 1);
      const pkg =
        /^node_modules\/((@[^/]+\/)?[^/]+)/.exec(where)?.[1] ??
        (where.startsWith('src/') ? where.replace(/:\d+$/, '') : where.startsWith('node:') ? 'node internals' : (k.split(' ')[0] ?? k));
      byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + ms);
    }
    const packages = [...byPackage.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(line);
    const text = `${f}: ${total.toFixed(0)} ms sampled\n${lines.join('\n')}\n-- by package or file --\n${packages.join('\n')}\n`;
    writeFileSync(join(d, `${f}.txt`), text);
    console.error(text);
  }
}

async function onClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}
