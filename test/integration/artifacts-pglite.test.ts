import { openDatabase } from '../../src/store/database.js';
import { artifactSuite } from './artifact-suite.js';

artifactSuite('embedded PGlite', () => openDatabase({ kind: 'pglite' }));
