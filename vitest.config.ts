import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/e2e/**', 'node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Each integration file starts its own PostgreSQL; two cores run two files at a time.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
