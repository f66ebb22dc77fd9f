import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/store/database.js';

describe("knex's own messages", () => {
  it('go through the JSON logger, not to the console', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino(
      { base: undefined, timestamp: false },
      new Writable({
        write(chunk: Buffer, _e, cb) {
          lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
          cb();
        },
      }),
    );
    // Nothing listens there: no connection is made by what follows.
    const db = await openDatabase({ kind: 'postgres', url: 'postgresql://lethe:secret@127.0.0.1:1/lethe' }, logger);
    try {
      (db.knex.client as { initializePool(): void }).initializePool();
      expect(lines).toEqual([{ level: 40, source: 'knex', msg: 'The pool has already been initialized' }]);
    } finally {
      await db.close();
    }
  });
});
