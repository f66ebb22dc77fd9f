import { readFileSync } from 'node:fs';

/** Lethe's version, from package.json (one level above src/ and dist/ alike). */
export const LETHE_VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
