import { type Env, loadServerConfig } from '../../src/config/config.js';
import { ConfigError } from '../../src/errors.js';

/** What the configuration tests (test/unit/config*.test.ts) share: a home, keys, and the error a load throws. */

export const HOME = '/home/lethe-test';
export const HASH_KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
export const ARTIFACT_KEY = 'ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100';

export function configErrorOf(env: Env, flags = {}): ConfigError {
  try {
    loadServerConfig(env, flags);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected loadServerConfig to throw a ConfigError');
}
