import { openDatabase } from '../../src/store/database.js';
import { engineSuite } from './engine-suite.js';

engineSuite('embedded PGlite', () => openDatabase({ kind: 'pglite' }));
