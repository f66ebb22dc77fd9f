import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DataLossError } from '../../src/errors.js';
import { ArtifactCipher, type SealedChunk, WRONG_ARTIFACT_KEY, artifactKeyId } from '../../src/privacy/artifact-cipher.js';
import { ArtifactWriter, readArtifact } from '../../src/privacy/export-artifacts.js';
import type { ArtifactRecord } from '../../src/store/artifacts.js';

const KEY = Buffer.alloc(32, 1);
const REQUEST = '6f1c1b8e-4f7e-4a57-9a39-3f1f4f0a1b2c';
const OTHER_REQUEST = '0b3e5d2a-1c4f-4e6b-8a7d-9f0e1d2c3b4a';
const DOC = `{"user_id":"u-1","email":"ada@example.com","login_events":[${Array.from({ length: 40 }, (_, i) => `{"id":"e${i}","city":"Zürich"}`).join(',')}]}`;

async function* from(chunks: readonly SealedChunk[]): AsyncGenerator<SealedChunk> {
  yield* chunks;
}

/** Seals `text` through the writer, fed in uneven pieces, with small chunks. */
async function seal(cipher: ArtifactCipher, requestId: string, text: string, chunkBytes = 64): Promise<{ chunks: SealedChunk[]; artifact: ArtifactRecord }> {
  const chunks: SealedChunk[] = [];
  const writer = new ArtifactWriter(cipher, requestId, async (c) => void chunks.push(c), chunkBytes);
  for (let i = 0; i < text.length; i += 37) {
    writer.sink(text.slice(i, i + 37));
    await writer.flush();
  }
  const { sizeBytes, chunkCount } = await writer.finish();
  const artifact: ArtifactRecord = {
    requestId,
    keyId: cipher.keyId,
    sha256: createHash('sha256').update(text).digest('hex'),
    sizeBytes,
    chunkCount,
    counts: [],
    totalRecords: 0,
    createdAt: new Date(),
    expiresAt: new Date(),
    state: 'available',
    deletedAt: null,
    keyScheme: 'data-key',
  };
  return { chunks, artifact };
}

async function read(cipher: ArtifactCipher, artifact: ArtifactRecord, chunks: readonly SealedChunk[]): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const b of readArtifact(cipher, artifact, from(chunks))) out.push(b);
  return Buffer.concat(out);
}

describe('export artifact encryption', () => {
  const cipher = new ArtifactCipher(KEY);

  it('round-trips a document in chunks, byte for byte, the last chunk holding the rest', async () => {
    const { chunks, artifact } = await seal(cipher, REQUEST, DOC);
    const bytes = Buffer.from(DOC, 'utf8');
    expect(artifact.sizeBytes).toBe(bytes.length);
    expect(chunks).toHaveLength(Math.ceil(bytes.length / 64));
    expect(chunks.map((c) => c.seq)).toEqual(chunks.map((_, i) => i));
    expect(chunks.slice(0, -1).every((c) => c.ciphertext.length === 64)).toBe(true);
    expect(new Set(chunks.map((c) => c.nonce.toString('hex'))).size).toBe(chunks.length);
    expect((await read(cipher, artifact, chunks)).equals(bytes)).toBe(true);
    expect(Buffer.concat(chunks.map((c) => c.ciphertext)).includes('ada@example.com')).toBe(false);
  });

  it('seals a document of exactly N chunks with a non-empty last chunk', async () => {
    const text = 'x'.repeat(128);
    const { chunks, artifact } = await seal(cipher, REQUEST, text);
    expect(chunks.map((c) => c.ciphertext.length)).toEqual([64, 64]);
    expect((await read(cipher, artifact, chunks)).toString()).toBe(text);
  });

  it('names a key by the first 16 hex digits of its SHA-256', () => {
    expect(cipher.keyId).toBe(createHash('sha256').update(KEY).digest('hex').slice(0, 16));
    expect(artifactKeyId(Buffer.alloc(32, 2))).not.toBe(cipher.keyId);
  });

  it('refuses a tampered chunk', async () => {
    const { chunks, artifact } = await seal(cipher, REQUEST, DOC);
    const tampered = chunks.map((c, i) => (i === 1 ? { ...c, ciphertext: Buffer.from(c.ciphertext.map((b, j) => (j === 5 ? b ^ 1 : b))) } : c));
    await expect(read(cipher, artifact, tampered)).rejects.toThrow(
      new DataLossError('Export artifact is damaged (chunk 1 does not authenticate); run the export again'),
    );
    const badTag = chunks.map((c, i) => (i === 0 ? { ...c, tag: Buffer.alloc(16) } : c));
    await expect(read(cipher, artifact, badTag)).rejects.toThrow('chunk 0 does not authenticate');
  });

  it('refuses reordered chunks', async () => {
    const { chunks, artifact } = await seal(cipher, REQUEST, DOC);
    const [a, b, ...rest] = chunks;
    if (a === undefined || b === undefined) throw new Error('expected several chunks');
    // Renumbered too, as someone rewriting the rows would: the position is in the additional data.
    const swapped = [{ ...b, seq: 0 }, { ...a, seq: 1 }, ...rest];
    await expect(read(cipher, artifact, swapped)).rejects.toThrow(
      new DataLossError('Export artifact is damaged (chunk 0 does not authenticate); run the export again'),
    );
    await expect(read(cipher, artifact, [b, a, ...rest])).rejects.toThrow('chunk 0 is missing');
  });

  it('refuses an artifact whose last chunk was dropped', async () => {
    const { chunks, artifact } = await seal(cipher, REQUEST, DOC);
    const last = chunks.length - 2;
    await expect(read(cipher, artifact, chunks.slice(0, -1))).rejects.toThrow(
      new DataLossError(`Export artifact is damaged (chunk ${last} does not authenticate as the last chunk); run the export again`),
    );
    await expect(read(cipher, artifact, [])).rejects.toThrow('Export artifact is damaged (it has no chunks)');
  });

  it('refuses a chunk taken from another artifact', async () => {
    const mine = await seal(cipher, REQUEST, DOC);
    const theirs = await seal(cipher, OTHER_REQUEST, DOC);
    const mixed = mine.chunks.map((c, i) => (i === 2 ? (theirs.chunks[2] ?? c) : c));
    await expect(read(cipher, mine.artifact, mixed)).rejects.toThrow('chunk 2 does not authenticate');
  });

  it('does not decrypt chunks sealed with another key', async () => {
    const { chunks, artifact } = await seal(new ArtifactCipher(randomBytes(32)), REQUEST, DOC);
    // The engine refuses by key id first (WRONG_ARTIFACT_KEY); without that check the chunks still fail.
    expect(WRONG_ARTIFACT_KEY).toContain('encrypted with a different LETHE_ARTIFACT_KEY');
    await expect(read(cipher, artifact, chunks)).rejects.toThrow('chunk 0 does not authenticate');
  });

  describe('data keys (crypto-shredding)', () => {
    it('seals with a data key that only the master key unwraps, for that artifact only', async () => {
      const { cipher: dataKey, wrapped } = cipher.newDataKey(REQUEST);
      const { chunks, artifact } = await seal(dataKey, REQUEST, DOC);
      expect((await read(cipher.openDataKey(REQUEST, wrapped), artifact, chunks)).toString('utf8')).toBe(DOC);
      expect(() => cipher.openDataKey(OTHER_REQUEST, wrapped)).toThrow('its data key does not authenticate');
      expect(() => new ArtifactCipher(randomBytes(32)).openDataKey(REQUEST, wrapped)).toThrow('its data key does not authenticate');
    });

    it('leaves the chunks unreadable to the master key once the data key is gone', async () => {
      const { cipher: dataKey } = cipher.newDataKey(REQUEST);
      const { chunks, artifact } = await seal(dataKey, REQUEST, DOC);
      await expect(read(cipher, artifact, chunks)).rejects.toThrow('chunk 0 does not authenticate');
      expect(dataKey.keyId).not.toBe(cipher.keyId);
    });
  });

  it('refuses chunks that decrypt but do not match the description', async () => {
    const { chunks, artifact } = await seal(cipher, REQUEST, DOC);
    const out: Buffer[] = [];
    const wrong = { ...artifact, sha256: '0'.repeat(64) };
    await expect(
      (async () => {
        for await (const b of readArtifact(cipher, wrong, from(chunks))) out.push(b);
      })(),
    ).rejects.toThrow('Export artifact is damaged (its size or digest does not match its description)');
    // The last chunk was held back: the reader never got a complete-looking document.
    expect(Buffer.concat(out).length).toBeLessThan(artifact.sizeBytes);
  });

  it('refuses a key that is not 32 bytes', () => {
    expect(() => new ArtifactCipher(Buffer.alloc(16))).toThrow('an artifact key is 32 bytes, not 16');
  });
});
