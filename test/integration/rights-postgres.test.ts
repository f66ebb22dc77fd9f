import { describe } from 'vitest';
import { openDatabase } from '../../src/store/database.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { rightsSuite } from './rights-suite.js';

const bin = requirePostgres();
let cluster: PostgresCluster | undefined;

describe.runIf(bin !== undefined)('PostgreSQL', () => {
  rightsSuite(
    'PostgreSQL',
    async () => {
      cluster = await startPostgres(bin ?? '');
      return openDatabase({ kind: 'postgres', url: await cluster.createDatabase() });
    },
    async () => cluster?.destroy(),
  );
});
