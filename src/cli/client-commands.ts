import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import { mintLocalToken } from '../auth/local-key.js';
import { connectPrivacyService, type PrivacyClient } from '../client/privacy-client.js';
import { receiveArtifact } from '../client/artifact-receiver.js';
import { IncompleteExportError, receiveExport } from '../client/export-receiver.js';
import type { DownstreamOutcome } from '../privacy/export-document.js';
import { loadClientConfig } from '../config/client-config.js';
import { ConfigError, InvalidArgumentError } from '../errors.js';
import { type Write, writeOutput } from './output-target.js';
import { ArtifactState, ConfirmationState, type PrivacyRequest, ProcessingBasis, RequestState, RequestType } from '../gen/lethe/privacy/v1/privacy.js';

export interface ClientFlags {
  as?: string;
  server?: string;
  dataDir?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsServerName?: string;
}

const TOKEN_TTL_SECONDS = 300;

export async function withClient<T>(flags: ClientFlags, defaultActor: string | undefined, fn: (client: PrivacyClient) => Promise<T>): Promise<T> {
  const config = loadClientConfig(process.env, flags);
  const actor = flags.as ?? (config.token === undefined ? defaultActor : undefined);
  let token: string;
  if (actor !== undefined) token = await mintLocalToken(config.dataDir, actor, TOKEN_TTL_SECONDS);
  else if (config.token !== undefined) token = config.token;
  else throw new ConfigError('no identity: pass --as <user-id> (mints a token with the local key) or set LETHE_TOKEN', '--as');
  // grpc-js hands a dialled IP address to TLS as the server name, which Node answers with a
  // deprecation warning (DEP0123) on stderr; the command's stderr is for its own one line.
  if (config.tls !== undefined && config.tls.serverName === undefined && isIP(config.server.replace(/^\[|\]?:\d+$/g, '')) !== 0) process.noDeprecation = true;
  const { client, close } = connectPrivacyService(config.server, token, config.tls);
  try {
    return await fn(client);
  } finally {
    close();
  }
}

/** Writes a verified document as `-o` says (src/cli/output-target.ts) and reports where to standard error. */
async function writeVerified(output: string | undefined, receive: (write: Write) => Promise<string>): Promise<void> {
  const summary = await writeOutput(output, receive);
  if (output !== undefined) console.error(`wrote ${output === '-' ? 'standard output' : output}: ${summary}`);
}

export async function exportCommand(
  userId: string | undefined,
  flags: ClientFlags & { output?: string; reason?: string; request?: string; allowPartial?: boolean },
): Promise<void> {
  if (userId !== undefined && flags.request !== undefined) {
    throw new InvalidArgumentError('give either a <user-id> to export or --request <id> to fetch a stored export, not both');
  }
  if (flags.request !== undefined) return fetchStoredExport(flags.request, flags);
  if (userId === undefined) throw new InvalidArgumentError('give the <user-id> to export, or --request <id> to fetch a stored export');
  // With neither --as nor LETHE_TOKEN, a user exports their own data.
  await withClient(flags, userId, (client) =>
    writeVerified(flags.output, async (write) => {
      const tty = process.stderr.isTTY;
      const progress = tty ? (n: number, total: number) => process.stderr.write(`\rexported ${n} of ${total} records`) : undefined;
      // One line per downstream service as its part ends (on a terminal, over the counter).
      const service = (o: DownstreamOutcome) => process.stderr.write(`${tty ? '\r\x1b[K' : ''}${describeOutcome(o)}\n`);
      const result = await receiveExport(client.exportUser({ userId, reason: flags.reason ?? '' }), write, progress, service);
      if (progress) process.stderr.write('\n');
      const missing = result.downstream.filter((o) => o.status !== 'complete');
      if (result.partial && flags.allowPartial !== true) {
        throw new IncompleteExportError(
          `the export is partial: ${missing.map((o) => o.service).join(', ')} did not contribute all of their data (see above); run it again, or pass --allow-partial to keep the document as it is`,
        );
      }
      const partial = result.partial ? `, PARTIAL (missing: ${missing.map((o) => o.service).join(', ')})` : '';
      return `${result.records} records${partial}, sha256 ${result.trailer.sha256} (verified), request ${result.header.requestId}`;
    }),
  );
}

/** `lethe export --request ID`: a document StoreExport kept on the server. */
async function fetchStoredExport(requestId: string, flags: ClientFlags & { output?: string }): Promise<void> {
  await withClient(flags, undefined, (client) =>
    writeVerified(flags.output, async (write) => {
      const a = await receiveArtifact(client.getExportArtifact({ requestId }), write);
      return `${a.totalRecords} records, sha256 ${a.sha256} (verified), request ${a.requestId}, expires ${iso(a.expiresAt)}`;
    }),
  );
}

function describeOutcome(o: DownstreamOutcome): string {
  const records = `${o.records} record${o.records === 1 ? '' : 's'}`;
  if (o.status === 'complete') return `${o.service}: complete, ${records}`;
  return `${o.service}: ${o.status === 'timed_out' ? 'TIMED OUT' : 'FAILED'} after ${records}: ${o.error ?? 'no reason given'}`;
}

export async function forgetCommand(userId: string, flags: ClientFlags & { reason: string; idempotencyKey?: string }): Promise<void> {
  await withClient(flags, undefined, async (client) => {
    const r = await client.forgetUser({ userId, reason: flags.reason, idempotencyKey: flags.idempotencyKey ?? randomUUID() });
    const scheduled = r.scheduled ? { scheduled: true, scheduled_for: iso(r.scheduledFor) } : {};
    console.log(
      JSON.stringify(
        {
          success: r.success,
          message: r.message,
          user_id: r.userId,
          request_id: r.requestId,
          replayed: r.replayed,
          ...scheduled,
          rows_affected: r.rowsAffected,
        },
        null,
        2,
      ),
    );
  });
}

export async function requestsListCommand(
  flags: ClientFlags & { subject?: string; state?: string; overdue?: boolean; dueWithin?: number; limit: number; json?: boolean },
): Promise<void> {
  await withClient(flags, undefined, async (client) => {
    const state =
      flags.state === undefined
        ? RequestState.REQUEST_STATE_UNSPECIFIED
        : RequestState[`REQUEST_STATE_${flags.state.toUpperCase()}` as keyof typeof RequestState];
    const r = await client.listPrivacyRequests({
      subjectId: flags.subject ?? '',
      state,
      overdueOnly: flags.overdue === true,
      dueBefore: flags.dueWithin === undefined ? undefined : new Date(Date.now() + flags.dueWithin),
      pageSize: Math.min(flags.limit, 500),
      pageToken: '',
    });
    if (flags.json === true) {
      console.log(JSON.stringify(r.requests.map(toJson), null, 2));
      return;
    }
    const rows = r.requests.map((q) => [
      q.id,
      typeName(q.type),
      q.subjectId,
      stateName(q.state) + (q.overdue ? ' (overdue)' : ''),
      iso(q.receivedAt),
      iso(q.dueAt),
    ]);
    printTable(['ID', 'TYPE', 'SUBJECT', 'STATE', 'RECEIVED', 'DUE'], rows);
  });
}

export async function requestsCancelCommand(id: string, flags: ClientFlags & { reason?: string }): Promise<void> {
  await withClient(flags, undefined, async (client) => {
    const { request } = await client.cancelPrivacyRequest({ id, reason: flags.reason ?? '' });
    if (request !== undefined) console.log(JSON.stringify(toJson(request), null, 2));
  });
}

export async function requestsExtendCommand(id: string, flags: ClientFlags & { months: number; reason: string }): Promise<void> {
  await withClient(flags, undefined, async (client) => {
    const { request } = await client.extendPrivacyRequest({ id, months: flags.months, reason: flags.reason });
    if (request !== undefined) console.log(JSON.stringify(toJson(request), null, 2));
  });
}

export async function requestsGetCommand(id: string, flags: ClientFlags): Promise<void> {
  await withClient(flags, undefined, async (client) => {
    const { request } = await client.getPrivacyRequest({ id });
    if (request !== undefined) console.log(JSON.stringify(toJson(request), null, 2));
  });
}

export function toJson(q: PrivacyRequest) {
  return {
    id: q.id,
    type: typeName(q.type),
    subject_id: q.subjectId,
    requester: q.requester,
    requested_by: q.requestedBy === '' ? null : q.requestedBy,
    reason: q.reason,
    state: stateName(q.state),
    overdue: q.overdue,
    received_at: iso(q.receivedAt),
    due_at: iso(q.dueAt),
    original_due_at: q.originalDueAt === undefined ? null : iso(q.originalDueAt),
    extension_reason: q.extensionReason === '' ? null : q.extensionReason,
    scheduled_for: q.scheduledFor === undefined ? null : iso(q.scheduledFor),
    completed_at: q.completedAt === undefined ? null : iso(q.completedAt),
    error: q.error === '' ? null : q.error,
    ...(q.fields.length > 0 ? { fields: q.fields } : {}),
    ...(q.purposes.length > 0 ? { purposes: q.purposes, basis: q.basis === ProcessingBasis.PROCESSING_BASIS_OBJECTION ? 'objection' : 'restriction' } : {}),
    rows_affected: q.rowsAffected,
    confirmations: q.confirmations.map((c) => ({
      service: c.service,
      state: ConfirmationState[c.state].replace('CONFIRMATION_STATE_', '').toLowerCase(),
      purged_at: c.purgedAt === undefined ? null : iso(c.purgedAt),
      rows_affected: c.rowsAffected,
      error: c.error === '' ? null : c.error,
    })),
    artifact:
      q.artifact === undefined
        ? null
        : {
            state: ArtifactState[q.artifact.state].replace('ARTIFACT_STATE_', '').toLowerCase(),
            sha256: q.artifact.sha256,
            size_bytes: q.artifact.sizeBytes,
            total_records: q.artifact.totalRecords,
            created_at: iso(q.artifact.createdAt),
            expires_at: iso(q.artifact.expiresAt),
          },
  };
}

const typeName = (t: RequestType) => (t === RequestType.REQUEST_TYPE_UNSPECIFIED ? 'unknown' : RequestType[t].replace('REQUEST_TYPE_', '').toLowerCase());
const stateName = (s: RequestState) => RequestState[s].replace('REQUEST_STATE_', '').toLowerCase();
export const iso = (d: Date | undefined) => (d === undefined ? '' : d.toISOString().replace('.000Z', 'Z'));

function printTable(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  for (const r of [head, ...rows])
    console.log(
      r
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd(),
    );
}
