import { describe, expect, it } from 'vitest';
import { capturingLogger } from '../support/logs.js';
import { openDatabase } from '../../src/store/database.js';

describe("knex's own messages", () => {
  it('go through the JSON logger, not to the console', async () => {
    const { logger, lines } = capturingLogger({ bare: true });
    // Nothing listens there: no connection is made by what follows.
    const db = await openDatabase({ kind: 'postgres', url: 'postgresql://lethe:secret@127.0.0.1:1/lethe' }, logger);
    try {
      (db.knex.client as { initializePool(): void }).initializePool();
      expect(lines()).toEqual([{ level: 40, source: 'knex', msg: 'The pool has already been initialized' }]);
    } finally {
      await db.close();
    }
  });
});
