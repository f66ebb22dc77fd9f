/**
 * `npm run bench -- <name>`: runs one benchmark. Benchmarks are not part of `npm test`; each
 * prints its figures last, one `name: value` per line.
 */
const benchmarks: Record<string, () => Promise<{ run(args: string[]): Promise<void> }>> = {
  export: () => import('./export.js'),
  'downstream-export': () => import('./downstream-export.js'),
  forget: () => import('./forget.js'),
  'export-typical': () => import('./export-typical.js'),
  fanout: () => import('./fanout.js'),
  operator: () => import('./operator.js'),
};

const [name, ...args] = process.argv.slice(2);
const load = name === undefined ? undefined : benchmarks[name];
if (load === undefined) {
  console.error(`usage: npm run bench -- <name>\nbenchmarks: ${Object.keys(benchmarks).join(', ')}`);
  process.exit(2);
}
try {
  await (await load()).run(args);
} catch (err) {
  console.error(err);
  process.exitCode = 1;
}
