import type { Knex } from 'knex';
import { CancelledError } from '../errors.js';

/** Stored exports: their descriptions and their encrypted chunks (see migration 003). */

/** One encrypted chunk of an artifact, as stored (sealed by privacy/artifact-cipher.ts). */
export interface SealedChunk {
  readonly seq: number;
  readonly nonce: Buffer;
  readonly tag: Buffer;
  readonly ciphertext: Buffer;
}

/** An artifact's own data key, encrypted with LETHE_ARTIFACT_KEY. */
export interface WrappedKey {
  readonly nonce: Buffer;
  readonly tag: Buffer;
  readonly wrappedKey: Buffer;
}

type ArtifactState = 'available' | 'expired' | 'erased';
/** 'data-key': sealed with the artifact's own wrapped key; 'master': with LETHE_ARTIFACT_KEY itself (stored before data keys). */
type KeyScheme = 'data-key' | 'master';

interface CategoryCount {
  readonly category: string;
  readonly exported: number;
}

export interface ArtifactRecord {
  readonly requestId: string;
  readonly keyId: string;
  readonly sha256: string;
  readonly sizeBytes: number;
  readonly chunkCount: number;
  readonly counts: readonly CategoryCount[];
  readonly totalRecords: number;
  readonly createdAt: Date;
  readonly expiresAt: Date;
  readonly state: ArtifactState;
  readonly deletedAt: Date | null;
  readonly keyScheme: KeyScheme;
}

interface Row {
  request_id: string;
  key_id: string;
  sha256: string;
  size_bytes: number | string;
  chunk_count: number;
  counts: CategoryCount[] | string;
  total_records: number | string;
  created_at: Date | string;
  expires_at: Date | string;
  state: ArtifactState;
  deleted_at: Date | string | null;
  key_scheme: KeyScheme;
}

interface ChunkRow {
  seq: number;
  nonce: Uint8Array;
  tag: Uint8Array;
  ciphertext: Uint8Array;
}

const ARTIFACTS = 'lethe_export_artifacts';
const CHUNKS = 'lethe_export_artifact_chunks';
const KEYS = 'lethe_export_artifact_keys';

function toRecord(r: Row): ArtifactRecord {
  return {
    requestId: r.request_id,
    keyId: r.key_id,
    sha256: r.sha256,
    sizeBytes: Number(r.size_bytes),
    chunkCount: r.chunk_count,
    counts: typeof r.counts === 'string' ? (JSON.parse(r.counts) as CategoryCount[]) : r.counts,
    totalRecords: Number(r.total_records),
    createdAt: new Date(r.created_at),
    expiresAt: new Date(r.expires_at),
    state: r.state,
    deletedAt: r.deleted_at === null ? null : new Date(r.deleted_at),
    keyScheme: r.key_scheme,
  };
}

// PGlite returns bytea as a Uint8Array, node-postgres as a Buffer.
const asBuffer = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

export const artifacts = {
  async insert(db: Knex | Knex.Transaction, a: Omit<ArtifactRecord, 'state' | 'deletedAt' | 'keyScheme'>): Promise<ArtifactRecord> {
    const row: Row = {
      request_id: a.requestId,
      key_id: a.keyId,
      sha256: a.sha256,
      size_bytes: a.sizeBytes,
      chunk_count: a.chunkCount,
      counts: [...a.counts],
      total_records: a.totalRecords,
      created_at: a.createdAt,
      expires_at: a.expiresAt,
      state: 'available',
      deleted_at: null,
      key_scheme: 'data-key',
    };
    await db(ARTIFACTS).insert({ ...row, counts: JSON.stringify(row.counts) });
    return toRecord(row);
  },

  async get(db: Knex | Knex.Transaction, requestId: string): Promise<ArtifactRecord | undefined> {
    const row = (await db(ARTIFACTS).where({ request_id: requestId }).first()) as Row | undefined;
    return row === undefined ? undefined : toRecord(row);
  },

  async forRequests(db: Knex | Knex.Transaction, requestIds: readonly string[]): Promise<Map<string, ArtifactRecord>> {
    if (requestIds.length === 0) return new Map();
    const rows = (await db(ARTIFACTS).whereIn('request_id', requestIds)) as Row[];
    return new Map(rows.map((r) => [r.request_id, toRecord(r)]));
  },

  /** Clears what an earlier, unfinished attempt of this export wrote. */
  async deleteChunks(db: Knex | Knex.Transaction, requestId: string): Promise<void> {
    await db(CHUNKS).where({ request_id: requestId }).delete();
    await db(KEYS).where({ request_id: requestId }).delete();
  },

  async insertKey(db: Knex | Knex.Transaction, requestId: string, k: WrappedKey): Promise<void> {
    await db(KEYS).insert({ request_id: requestId, nonce: k.nonce, tag: k.tag, wrapped_key: k.wrappedKey });
  },

  async key(db: Knex | Knex.Transaction, requestId: string): Promise<WrappedKey | undefined> {
    const row = (await db(KEYS).where({ request_id: requestId }).first()) as { nonce: Uint8Array; tag: Uint8Array; wrapped_key: Uint8Array } | undefined;
    return row === undefined ? undefined : { nonce: asBuffer(row.nonce), tag: asBuffer(row.tag), wrappedKey: asBuffer(row.wrapped_key) };
  },

  async insertChunk(db: Knex | Knex.Transaction, requestId: string, c: SealedChunk): Promise<void> {
    await db(CHUNKS).insert({ request_id: requestId, seq: c.seq, nonce: c.nonce, tag: c.tag, ciphertext: c.ciphertext });
  },

  /** The chunks in order, `pageSize` per query: only one page is in memory. */
  async *chunks(db: Knex, requestId: string, pageSize: number, signal: AbortSignal): AsyncGenerator<SealedChunk> {
    let after = -1;
    for (;;) {
      if (signal.aborted) throw new CancelledError('The download was cancelled');
      const rows = (await db(CHUNKS)
        .where({ request_id: requestId })
        .andWhere('seq', '>', after)
        .orderBy('seq')
        .limit(pageSize)
        .select('seq', 'nonce', 'tag', 'ciphertext')) as ChunkRow[];
      for (const r of rows) yield { seq: r.seq, nonce: asBuffer(r.nonce), tag: asBuffer(r.tag), ciphertext: asBuffer(r.ciphertext) };
      const last = rows.at(-1);
      if (last === undefined || rows.length < pageSize) return;
      after = last.seq;
    }
  },

  /**
   * Deletes the chunks of up to `limit` artifacts past their expiry and marks them expired, in
   * one transaction; replicas sweeping at once skip each other's rows. Returns their request ids.
   */
  async expireDue(knex: Knex, now: Date, limit: number): Promise<string[]> {
    return knex.transaction(async (trx) => {
      const ids = (await trx(ARTIFACTS)
        .where({ state: 'available' })
        .andWhere('expires_at', '<=', now)
        .orderBy('expires_at')
        .limit(limit)
        .forUpdate()
        .skipLocked()
        .pluck('request_id')) as string[];
      if (ids.length === 0) return ids;
      await trx(CHUNKS).whereIn('request_id', ids).delete();
      await trx(KEYS).whereIn('request_id', ids).delete();
      await trx(ARTIFACTS).whereIn('request_id', ids).update({ state: 'expired', deleted_at: now });
      return ids;
    });
  },
};
