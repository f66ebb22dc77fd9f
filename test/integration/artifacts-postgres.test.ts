import { describe } from 'vitest';
import { openDatabase } from '../../src/store/database.js';
import { type PostgresCluster, requirePostgres, startPostgres } from '../support/postgres.js';
import { artifactSuite } from './artifact-suite.js';

const bin = requirePostgres();
let cluster: PostgresCluster | undefined;
let url = '';

describe.runIf(bin !== undefined)('PostgreSQL', () => {
  artifactSuite(
    'PostgreSQL',
    async () => {
      cluster = await startPostgres(bin ?? '');
      url = await cluster.createDatabase();
      return openDatabase({ kind: 'postgres', url });
    },
    { close: async () => cluster?.destroy(), openReplica: () => openDatabase({ kind: 'postgres', url }) },
  );
});
