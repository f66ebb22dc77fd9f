import { describe } from 'vitest';
import { openDatabase } from '../../src/store/database.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { erasureProofSuite } from './erasure-proof-suite.js';

const bin = requirePostgres();
let cluster: PostgresCluster | undefined;

describe.runIf(bin !== undefined)('PostgreSQL', () => {
  erasureProofSuite(
    'PostgreSQL',
    async () => {
      cluster = await startPostgres(bin ?? '');
      return openDatabase({ kind: 'postgres', url: await cluster.createDatabase() });
    },
    async () => cluster?.destroy(),
  );
});
