import { pino } from 'pino';
import { loadServerConfig } from '../src/config/config.js';
import { startLetheServer } from '../src/server/lethe-server.js';

/**
 * The Lethe server in a process of its own, so that a benchmark can read its RSS from /proc.
 * Configured from the environment like `lethe serve`; `--listen HOST:PORT` is the only flag.
 * Prints `ready <port>` on stdout once it listens; logs go to stderr.
 */
const at = process.argv.indexOf('--listen');
const config = loadServerConfig(process.env, { listen: at >= 0 ? process.argv[at + 1] : undefined });
const logger = pino({ level: config.logLevel, base: { service: 'lethe' } }, pino.destination(2));
const server = await startLetheServer(config, logger);
process.stdout.write(`ready ${server.port}\n`);

const stop = () => {
  server.stop(1_000).then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
