import { openDatabase } from '../../src/store/database.js';
import { erasureProofSuite } from './erasure-proof-suite.js';

erasureProofSuite('embedded PGlite', () => openDatabase({ kind: 'pglite' }));
