import { openDatabase } from '../../src/store/database.js';
import { rightsSuite } from './rights-suite.js';

rightsSuite('embedded PGlite', () => openDatabase({ kind: 'pglite' }));
