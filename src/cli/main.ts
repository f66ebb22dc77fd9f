import { Command, InvalidArgumentError as CommanderArgError, Option } from 'commander';
import { ConfigError, LetheError } from '../errors.js';
import { parseDuration } from '../config/common.js';
import { LETHE_VERSION } from '../runtime/version.js';

/**
 * Each command's module (gRPC, the database, Kubernetes clients) is loaded only when that
 * command runs, so `lethe --help`, `--version` and mistakes answer at once.
 */
function lazy<M, K extends keyof M>(load: () => Promise<M>, name: K) {
  return async (...args: unknown[]): Promise<void> => {
    const command = (await load())[name] as unknown as (...a: unknown[]) => Promise<void>;
    await command(...args);
  };
}
const clientCommands = () => import('./client-commands.js');

const program = new Command('lethe')
  .description('GDPR export, erasure, rectification, restriction and consent for microservice platforms')
  .version(LETHE_VERSION, '-V, --version', 'print the version')
  .showHelpAfterError()
  .configureOutput({ outputError: (str, write) => write(str) });

const duration = (v: string) => {
  try {
    return parseDuration(v, '--due-within');
  } catch {
    throw new CommanderArgError('must be a duration such as 24h or 7d');
  }
};

const positiveInt = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new CommanderArgError('must be a positive integer');
  return n;
};

program
  .command('serve')
  .description('run the PrivacyService (embedded PGlite unless DATABASE_URL is set)')
  .option('--demo', 'load the demo data (idempotent)')
  .option('--listen <host:port>', 'address to listen on (default 127.0.0.1:50051, or LETHE_LISTEN)')
  .option('--http-listen <host:port>', "serve the reference's HTTP API there too (or LETHE_HTTP_LISTEN; with --demo: 127.0.0.1:8080)")
  .option('--data-dir <dir>', 'where the embedded database and the local signing key live (default ~/.lethe, or LETHE_DATA_DIR)')
  .option('--tls-cert <file>', 'serve TLS with this PEM certificate (chain), re-read when it changes (or LETHE_TLS_CERT)')
  .option('--tls-key <file>', 'the PEM private key of --tls-cert (or LETHE_TLS_KEY)')
  .option('--tls-client-ca <file>', 'require client certificates signed by this CA: mutual TLS (or LETHE_TLS_CLIENT_CA)')
  .action(lazy(() => import('./serve-command.js'), 'serveCommand'));

program
  .command('operator')
  .description('carry out PrivacyRequest resources through the PrivacyService (KUBECONFIG or in-cluster; LETHE_SERVER, LETHE_TOKEN_FILE, LETHE_TLS_CA)')
  .action(lazy(() => import('./operator-command.js'), 'operatorCommand'));

program
  .command('sidecar')
  .description("purge anonymized users from this service's own database (the downstream agent; DATABASE_URL and LETHE_NATS_URL)")
  .requiredOption('--service <name>', 'this service: the durable consumer and the receipt subject privacy.v1.user.purged.<name>')
  .requiredOption('--data-map <file>', "this service's data map (its forget half is applied)")
  .option('--health-listen <host:port>', 'address of /healthz and /readyz (default 127.0.0.1:8081)')
  .action(lazy(() => import('./sidecar-command.js'), 'sidecarCommand'));

program
  .command('token')
  .description("mint a short-lived token with the local signing key of `lethe serve`'s data directory")
  .requiredOption('--as <user-id>', 'the user (token subject) to act as')
  .addOption(new Option('--ttl <seconds>', 'lifetime in seconds').default(900).argParser(positiveInt))
  .option('--data-dir <dir>', 'the data directory of `lethe serve`')
  .action(lazy(() => import('./token-command.js'), 'tokenCommand'));

const clientOptions = (c: Command) =>
  c
    .option('--as <user-id>', 'act as this user, with a token minted from the local signing key (otherwise LETHE_TOKEN)')
    .option('--server <host:port>', 'the PrivacyService address (default 127.0.0.1:50051, or LETHE_SERVER)')
    .option('--data-dir <dir>', 'the data directory of `lethe serve`, for --as')
    .option('--tls-ca <file>', "speak TLS, trusting this CA for the server's certificate (or LETHE_TLS_CA); without it: plaintext")
    .option('--tls-cert <file>', 'a client certificate, for a server that requires one (mutual TLS; or LETHE_TLS_CERT)')
    .option('--tls-key <file>', 'the private key of --tls-cert (or LETHE_TLS_KEY)')
    .option('--tls-server-name <name>', "the name the server's certificate carries, when it is not the host dialled (or LETHE_TLS_SERVER_NAME)");

clientOptions(
  program
    .command('export [user-id]')
    .description(
      "write everything held about a user as one JSON document, verified against the stream's digest; or, with --request, fetch an export stored on the server",
    )
    .option(
      '-o, --output <file>',
      "write to this file, replaced only once the document verified; '-' for standard output; a device or FIFO is written in place (default: standard output)",
    )
    .option('--reason <text>', 'why, recorded in the ledger and the audit log')
    .option('--allow-partial', 'keep a document that lacks some downstream service’s part (it says which, and why); without it, such an export fails')
    .option('--request <id>', 'fetch the export artifact of this privacy request (made with StoreExport, e.g. by the operator) instead of exporting <user-id>'),
).action(lazy(clientCommands, 'exportCommand'));

clientOptions(
  program
    .command('forget <user-id>')
    .description('anonymize a user, preserving audit logs')
    .requiredOption('--reason <text>', 'why, recorded in the audit log (e.g. "GDPR Right to be Forgotten")')
    .option('--idempotency-key <key>', 'retrying with the same key returns the first result (default: a new UUID)'),
).action(lazy(clientCommands, 'forgetCommand'));

const requests = program.command('requests').description('read the privacy request ledger');
clientOptions(
  requests
    .command('list', { isDefault: true })
    .description('list privacy requests, newest first')
    .option('--subject <user-id>', 'only requests about this user')
    .addOption(
      new Option('--state <state>', 'only requests in this state').choices([
        'scheduled',
        'running',
        'anonymized',
        'applied',
        'completed',
        'failed',
        'cancelled',
      ]),
    )
    .option('--overdue', 'only requests past their due date')
    .option('--due-within <duration>', 'only open requests due within this time, e.g. 7d', duration)
    .option('--json', 'print the requests as JSON')
    .addOption(new Option('--limit <n>', 'at most this many').default(50).argParser(positiveInt)),
).action(lazy(clientCommands, 'requestsListCommand'));
clientOptions(requests.command('get <id>').description('show one privacy request')).action(lazy(clientCommands, 'requestsGetCommand'));
clientOptions(
  requests
    .command('cancel <id>')
    .description("cancel a scheduled request (a person's own erasure during its grace period)")
    .option('--reason <text>', 'why, recorded in the audit log'),
).action(lazy(clientCommands, 'requestsCancelCommand'));
clientOptions(
  requests
    .command('extend <id>')
    .description("extend an open request's due date once by 1 or 2 months (GDPR Art. 12(3); platform owners)")
    .requiredOption('--months <n>', '1 or 2', positiveInt)
    .requiredOption('--reason <text>', 'why the request needs more time'),
).action(lazy(clientCommands, 'requestsExtendCommand'));

const rightsCommands = () => import('./rights-commands.js');
const collect = (v: string, prev: string[] = []) => [...prev, v];

clientOptions(
  program
    .command('rectify <user-id>')
    .description("correct a user's data (GDPR Art. 16) here and in every downstream service's copy")
    .requiredOption('--set <field=value>', 'a rectifiable field and its new value (repeatable), e.g. --set email=new@example.com', collect)
    .option('--reason <text>', 'why, recorded in the ledger and the audit log (which never records the values)')
    .option('--idempotency-key <key>', 'retrying with the same key returns the first result (default: a new UUID)'),
).action(lazy(rightsCommands, 'rectifyCommand'));
clientOptions(
  program
    .command('restrict <user-id>')
    .description('restrict (Art. 18) or, with --objection, object to (Art. 21) processing for some purposes')
    .requiredOption('--purpose <name>', 'a purpose of the data map (repeatable), e.g. --purpose marketing', collect)
    .option('--objection', 'record an objection rather than a restriction')
    .option('--lift', 'lift the restriction (or objection) instead')
    .option('--reason <text>', 'why, recorded in the ledger and the audit log')
    .option('--idempotency-key <key>', 'retrying with the same key returns the first result (default: a new UUID)'),
).action(lazy(rightsCommands, 'restrictCommand'));
const consent = program.command('consent').description("record, withdraw and show a user's consents per purpose (Art. 7)");
clientOptions(
  consent
    .command('record <user-id>')
    .description('record that the user agreed to a purpose')
    .requiredOption('--purpose <name>', 'the purpose')
    .requiredOption('--text-version <version>', 'the version of the text agreed to')
    .option('--text-sha256 <hex>', 'the SHA-256 of that text')
    .requiredOption('--source <where>', 'where it was given, e.g. web-signup'),
).action(lazy(rightsCommands, 'consentRecordCommand'));
clientOptions(
  consent
    .command('withdraw <user-id>')
    .description('withdraw consent for some purposes, or all with none named')
    .option('--purpose <name>', 'a purpose (repeatable; default: every consent in force)', collect)
    .requiredOption('--source <where>', 'where it was withdrawn, e.g. settings-page')
    .option('--reason <text>', 'why, recorded in the ledger'),
).action(lazy(rightsCommands, 'consentWithdrawCommand'));
clientOptions(consent.command('list <user-id>').description("show the user's consent records and current choices per purpose")).action(
  lazy(rightsCommands, 'consentListCommand'),
);

/** One clear line and a non-zero exit for every failure a user can cause or fix. */
async function report(err: unknown): Promise<number> {
  // The reader of our output went away (`lethe export … | head`): nothing to say.
  if ((err as { code?: unknown }).code === 'EPIPE') return 0;
  const { ClientError, Status } = await import('nice-grpc');
  const { IncompleteExportError } = await import('../client/export-receiver.js');
  if (err instanceof ClientError) {
    console.error(`lethe: ${Status[err.code]}: ${err.details}`);
    return 1;
  }
  if (err instanceof LetheError || err instanceof IncompleteExportError) {
    console.error(`lethe: ${err.message}`);
    return 1;
  }
  if (err instanceof ConfigError) {
    console.error(`lethe: configuration: ${err.message}`);
    return 2;
  }
  console.error(`lethe: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  return 70;
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.exitCode = await report(err);
}
