#!/usr/bin/env node
// The `lethe` command. The TypeScript sources are compiled to dist/ by `npm install` (prepare).
import { existsSync } from 'node:fs';

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  console.error('lethe: dist/ is missing; run `npm install` (or `npm run build`) in the repository first');
  process.exit(2);
}
await import(main.href);
