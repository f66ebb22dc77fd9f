import { type Client, Metadata, createChannel, createClient } from 'nice-grpc';
import { PrivacyServiceDefinition } from '../gen/lethe/privacy/v1/privacy.js';

export type PrivacyClient = Client<typeof PrivacyServiceDefinition>;

/** A PrivacyService client that sends `token` as a bearer token on every call. */
export function connectPrivacyService(address: string, token: string): { client: PrivacyClient; close(): void } {
  const channel = createChannel(address, undefined, { 'grpc.max_receive_message_length': 64 * 1024 * 1024 });
  const client = createClient(PrivacyServiceDefinition, channel, {
    '*': { metadata: Metadata({ authorization: `Bearer ${token}` }) },
  });
  return { client, close: () => channel.close() };
}
