/** Reads a `/metrics` endpoint and the samples in Prometheus' text exposition format. */

export interface Scrape {
  readonly contentType: string;
  readonly body: string;
}

export async function scrape(port: number, host = '127.0.0.1'): Promise<Scrape> {
  const res = await fetch(`http://${host}:${port}/metrics`);
  if (res.status !== 200) throw new Error(`GET /metrics answered ${res.status}`);
  return { contentType: res.headers.get('content-type') ?? '', body: await res.text() };
}

/**
 * The value of the sample `name` whose labels are exactly `labels` (in any order); undefined
 * when there is no such sample.
 */
export function sample(body: string, name: string, labels: Readonly<Record<string, string>> = {}): number | undefined {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of body.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const got = (m[2] ?? '')
      .split(/,(?=[a-zA-Z_]+=")/)
      .filter((s) => s.length > 0)
      .sort()
      .join(',');
    if (got === want) return Number(m[3]);
  }
  return undefined;
}
