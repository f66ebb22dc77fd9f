import { mintLocalToken } from '../auth/local-key.js';
import { defaultDataDir } from '../config/config.js';
import { requireId } from '../privacy/validation.js';

export async function tokenCommand(opts: { as: string; ttl: number; dataDir?: string }): Promise<void> {
  const subject = requireId(opts.as, '--as');
  const token = await mintLocalToken(opts.dataDir ?? defaultDataDir(process.env), subject, opts.ttl);
  process.stdout.write(`${token}\n`);
}
