import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { DataLossError } from '../errors.js';
import type { SealedChunk, WrappedKey } from '../store/artifacts.js';

export type { SealedChunk, WrappedKey } from '../store/artifacts.js';

/**
 * AES-256-GCM for export artifacts, chunk by chunk. Every chunk has a fresh random 96-bit nonce
 * and its own tag, and its additional data binds the export's request id, the chunk's position
 * and whether it is the last one: a chunk moved to another position or another artifact, a
 * reordered or a truncated artifact all fail to decrypt.
 */

export const WRONG_ARTIFACT_KEY =
  'Export artifact was encrypted with a different LETHE_ARTIFACT_KEY; configure the key it was stored with, or run the export again';
export const damagedArtifact = (detail: string): DataLossError => new DataLossError(`Export artifact is damaged (${detail}); run the export again`);

const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

/** Names a key without revealing it: the first 16 hex digits of its SHA-256. */
export function artifactKeyId(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

function additionalData(requestId: string, seq: number, final: boolean): Buffer {
  return Buffer.from(`lethe-export-artifact-v1\n${requestId}\n${seq}\n${final ? 'final' : 'more'}`, 'utf8');
}

function wrapAdditionalData(requestId: string): Buffer {
  return Buffer.from(`lethe-export-artifact-key-v1\n${requestId}`, 'utf8');
}

export class ArtifactCipher {
  readonly keyId: string;

  constructor(private readonly key: Buffer) {
    if (key.length !== KEY_BYTES) throw new Error(`an artifact key is ${KEY_BYTES} bytes, not ${key.length}`);
    this.keyId = artifactKeyId(key);
  }

  /**
   * A fresh data key for one artifact (crypto-shredding: destroying the wrapped key makes every
   * copy of the artifact's chunks unreadable), and the key wrapped with this cipher's key. The
   * wrapping binds the request id, so a wrapped key moved to another artifact does not open.
   */
  newDataKey(requestId: string): { cipher: ArtifactCipher; wrapped: WrappedKey } {
    const key = randomBytes(KEY_BYTES);
    const nonce = randomBytes(NONCE_BYTES);
    const c = createCipheriv('aes-256-gcm', this.key, nonce, { authTagLength: TAG_BYTES });
    c.setAAD(wrapAdditionalData(requestId));
    const wrappedKey = Buffer.concat([c.update(key), c.final()]);
    return { cipher: new ArtifactCipher(key), wrapped: { nonce, tag: c.getAuthTag(), wrappedKey } };
  }

  /** The data key of an artifact, unwrapped; DataLossError when it does not authenticate. */
  openDataKey(requestId: string, wrapped: WrappedKey): ArtifactCipher {
    if (wrapped.nonce.length !== NONCE_BYTES || wrapped.tag.length !== TAG_BYTES) throw damagedArtifact('its data key is malformed');
    const d = createDecipheriv('aes-256-gcm', this.key, wrapped.nonce, { authTagLength: TAG_BYTES });
    d.setAAD(wrapAdditionalData(requestId));
    d.setAuthTag(wrapped.tag);
    try {
      return new ArtifactCipher(Buffer.concat([d.update(wrapped.wrappedKey), d.final()]));
    } catch {
      throw damagedArtifact('its data key does not authenticate');
    }
  }

  seal(requestId: string, seq: number, final: boolean, plaintext: Buffer): SealedChunk {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.key, nonce, { authTagLength: TAG_BYTES });
    cipher.setAAD(additionalData(requestId, seq, final));
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return { seq, nonce, tag: cipher.getAuthTag(), ciphertext };
  }

  /** Decrypts the chunk expected at position `seq`; throws DataLossError when it does not authenticate. */
  open(requestId: string, seq: number, final: boolean, chunk: SealedChunk): Buffer {
    if (chunk.seq !== seq) throw damagedArtifact(`chunk ${seq} is missing`);
    if (chunk.nonce.length !== NONCE_BYTES || chunk.tag.length !== TAG_BYTES) throw damagedArtifact(`chunk ${seq} is malformed`);
    const decipher = createDecipheriv('aes-256-gcm', this.key, chunk.nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(additionalData(requestId, seq, final));
    decipher.setAuthTag(chunk.tag);
    try {
      return Buffer.concat([decipher.update(chunk.ciphertext), decipher.final()]);
    } catch {
      throw damagedArtifact(final ? `chunk ${seq} does not authenticate as the last chunk` : `chunk ${seq} does not authenticate`);
    }
  }

  /**
   * Decrypts an artifact's chunks in order, one ahead so that the last one is opened as the
   * last: a truncated artifact fails at its new end. Yields each chunk's plaintext and whether it
   * is the last.
   */
  async *openAll(requestId: string, chunks: AsyncIterable<SealedChunk>): AsyncGenerator<{ bytes: Buffer; final: boolean }> {
    let seq = 0;
    let held: SealedChunk | undefined;
    for await (const chunk of chunks) {
      if (held !== undefined) yield { bytes: this.open(requestId, seq++, false, held), final: false };
      held = chunk;
    }
    if (held === undefined) throw damagedArtifact('it has no chunks');
    yield { bytes: this.open(requestId, seq, true, held), final: true };
  }
}
