import { type CallOptions, type Client, type ClientMiddlewareCall, Metadata, createChannel, createClientFactory } from 'nice-grpc';
import type { ClientTlsConfig } from '../config/tls-config.js';
import { PrivacyServiceDefinition } from '../gen/lethe/privacy/v1/privacy.js';
import { channelCredentials } from '../tls/client-credentials.js';

export type PrivacyClient = Client<typeof PrivacyServiceDefinition>;

/** A bearer token, or a function giving the current one (a projected token the kubelet rotates). */
export type TokenSource = string | (() => Promise<string>);

const FLOW_CONTROL_WINDOW_BYTES = 4 * 1024 * 1024;

/**
 * A PrivacyService client that sends the token as `authorization: Bearer …` on every call; over
 * TLS when `tls` is given (a bad file throws a ConfigError naming it), else plaintext; with
 * `reload`, the TLS files are read again as they rotate (long-running clients).
 */
export function connectPrivacyService(
  address: string,
  token: TokenSource,
  tls?: ClientTlsConfig,
  reload?: Parameters<typeof channelCredentials>[1],
): { client: PrivacyClient; close(): void } {
  const serverName = tls?.serverName === undefined ? {} : { 'grpc.ssl_target_name_override': tls.serverName, 'grpc.default_authority': tls.serverName };
  const channel = createChannel(address, channelCredentials(tls, reload), {
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    // HTTP/2 lets a server send only as much as the receiver's window before it waits for a
    // WINDOW_UPDATE; Node's default window (64 KiB) is smaller than one export batch.
    'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW_BYTES,
    ...serverName,
  });
  const current = typeof token === 'string' ? () => Promise.resolve(token) : token;
  const client = createClientFactory()
    .use(async function* bearer<Req, Res>(call: ClientMiddlewareCall<Req, Res>, options: CallOptions) {
      const metadata = Metadata(options.metadata).set('authorization', `Bearer ${await current()}`);
      return yield* call.next(call.request, { ...options, metadata });
    })
    .create(PrivacyServiceDefinition, channel);
  return { client, close: () => channel.close() };
}
