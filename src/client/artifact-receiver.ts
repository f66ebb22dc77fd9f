import { createHash } from 'node:crypto';
import type { ExportArtifact, GetExportArtifactResponse } from '../gen/lethe/privacy/v1/privacy.js';
import { IncompleteExportError } from './export-receiver.js';

/**
 * Receives a stored export (GetExportArtifact): the description first, then the document's
 * bytes, handed to `write` as they arrive (awaited, so a slow disk slows the stream). Checks the
 * size and the SHA-256 against the description; throws IncompleteExportError otherwise.
 */
export async function receiveArtifact(
  stream: AsyncIterable<GetExportArtifactResponse>,
  write: (chunk: Uint8Array) => Promise<void> | void,
): Promise<ExportArtifact> {
  let artifact: ExportArtifact | undefined;
  const hash = createHash('sha256');
  let size = 0;
  for await (const message of stream) {
    const part = message.part;
    if (part === undefined) throw new IncompleteExportError('the server sent an empty message');
    if (part.$case === 'artifact') {
      if (artifact !== undefined) throw new IncompleteExportError('the server sent two artifact descriptions');
      artifact = part.value;
    } else {
      if (artifact === undefined) throw new IncompleteExportError('bytes arrived before the artifact description');
      hash.update(part.value);
      size += part.value.length;
      await write(part.value);
    }
  }
  if (artifact === undefined) throw new IncompleteExportError('the stream ended before the artifact description');
  if (size !== artifact.sizeBytes) throw new IncompleteExportError(`received ${size} bytes, the artifact has ${artifact.sizeBytes}`);
  if (hash.digest('hex') !== artifact.sha256) throw new IncompleteExportError('the document digest does not match the artifact');
  return artifact;
}
