import { createHash } from 'node:crypto';
import type { ArtifactRecord } from '../store/artifacts.js';
import { type ArtifactCipher, type SealedChunk, damagedArtifact } from './artifact-cipher.js';
import { type DocumentText, documentBytes } from './export-document.js';

/** Plaintext bytes per encrypted chunk. */
const ARTIFACT_CHUNK_BYTES = 256 * 1024;

export const artifactExpired = (at: Date): string => `Export artifact expired at ${at.toISOString()}; run the export again`;
export const ARTIFACT_ERASED = 'Export artifact was erased when its subject was forgotten';
export const ARTIFACT_KEY_ERASED =
  'The export stored under this idempotency key was erased when its subject was forgotten; use a new idempotency key to export again';

/**
 * Takes the canonical document's text as the export assembles it and writes it encrypted, one
 * chunk at a time: at most a chunk and a batch are in memory, never the document.
 */
export class ArtifactWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private seq = 0;
  private size = 0;

  constructor(
    private readonly cipher: ArtifactCipher,
    private readonly requestId: string,
    private readonly write: (chunk: SealedChunk) => Promise<void>,
    private readonly chunkBytes = ARTIFACT_CHUNK_BYTES,
  ) {}

  /** The assembler's sink. It is called synchronously, so it only buffers; `flush` writes. */
  readonly sink = (text: DocumentText): void => {
    const b = documentBytes(text);
    this.pending.push(b);
    this.pendingBytes += b.length;
    this.size += b.length;
  };

  /** Writes every full chunk, keeping at least one byte back so that the last chunk is sealed as the last. */
  async flush(): Promise<void> {
    if (this.pendingBytes <= this.chunkBytes) return;
    const all = Buffer.concat(this.pending);
    let at = 0;
    while (all.length - at > this.chunkBytes) {
      await this.writeChunk(all.subarray(at, at + this.chunkBytes), false);
      at += this.chunkBytes;
    }
    this.pending = [all.subarray(at)];
    this.pendingBytes = all.length - at;
  }

  /** Writes the rest as the last chunk; returns the document's size and the number of chunks. */
  async finish(): Promise<{ sizeBytes: number; chunkCount: number }> {
    await this.flush();
    await this.writeChunk(Buffer.concat(this.pending), true);
    this.pending = [];
    this.pendingBytes = 0;
    return { sizeBytes: this.size, chunkCount: this.seq };
  }

  private async writeChunk(plaintext: Buffer, final: boolean): Promise<void> {
    await this.write(this.cipher.seal(this.requestId, this.seq, final, plaintext));
    this.seq += 1;
  }
}

/**
 * Decrypts a stored artifact in order and checks it against its description. The last chunk
 * is released only once the size and the SHA-256 of the whole document match, so a reader never
 * receives a complete-looking document that is not the one stored.
 */
export async function* readArtifact(cipher: ArtifactCipher, artifact: ArtifactRecord, chunks: AsyncIterable<SealedChunk>): AsyncGenerator<Buffer> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const { bytes, final } of cipher.openAll(artifact.requestId, chunks)) {
    hash.update(bytes);
    size += bytes.length;
    if (final && (size !== artifact.sizeBytes || hash.digest('hex') !== artifact.sha256)) {
      throw damagedArtifact('its size or digest does not match its description');
    }
    yield bytes;
  }
}
