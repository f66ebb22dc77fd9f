import { pino } from 'pino';
import { loadServerConfig } from '../config/config.js';
import { startLetheServer } from '../server/lethe-server.js';
import { stopOnSignals } from './shutdown.js';

export async function serveCommand(flags: {
  demo?: boolean;
  listen?: string;
  httpListen?: string;
  dataDir?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
}): Promise<void> {
  const config = loadServerConfig(process.env, flags);
  const logger = pino({ level: config.logLevel, base: { service: 'lethe' } });
  const server = await startLetheServer(config, logger);
  stopOnSignals(logger, () => server.stop());
}
