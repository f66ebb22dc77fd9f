import type { Principal } from './principal.js';
import type { EngineOptions } from './engine-part.js';
import type { ConfirmationOutcome, NewConfirmation } from '../store/ledger.js';
import { Erasure, type ForgetResult } from './erasure.js';
import { type ExportEvent, ExportService } from './export-service.js';
import { LedgerQueries, type PrivacyRequestView } from './ledger-queries.js';
import { type ArtifactPart, type StoredExport, StoredExports } from './stored-exports.js';

export { type ArtifactOptions, type ArtifactView, type EngineOptions, KEY_REUSED, REQUEST_NOT_FOUND, UUID } from './engine-part.js';
export { FORGET_MESSAGE, type ForgetResult } from './erasure.js';
export { type ExportEvent } from './export-service.js';
export { type PrivacyRequestView } from './ledger-queries.js';
export { type ArtifactPart, NO_ARTIFACT, type StoredExport } from './stored-exports.js';

/**
 * The privacy engine: export, stored exports, erasure and the ledger over one data map. Front
 * ends call only this; each capability is a part of its own (see engine-part.ts).
 */
export class PrivacyEngine {
  private readonly exports: ExportService;
  private readonly stored: StoredExports;
  private readonly erasure: Erasure;
  private readonly ledger: LedgerQueries;

  constructor(opts: EngineOptions) {
    this.exports = new ExportService(opts);
    this.stored = new StoredExports(opts, this.exports);
    this.erasure = new Erasure(opts);
    this.ledger = new LedgerQueries(opts);
  }

  /**
   * Streams the subject's data: a header, batches, a trailer, read in one REPEATABLE READ
   * snapshot. Stopping the iteration (a cancelled call) rolls the snapshot back.
   */
  exportUser(actor: Principal, input: { userId: string; reason: string }, signal: AbortSignal): AsyncGenerator<ExportEvent> {
    return this.exports.exportUser(actor, input, signal);
  }

  /** Runs an export on the server and keeps the document encrypted (StoreExport). */
  storeExport(
    actor: Principal,
    input: { userId: string; reason: string; idempotencyKey: string; requestedBy?: string },
    signal: AbortSignal,
  ): Promise<StoredExport> {
    return this.stored.storeExport(actor, input, signal);
  }

  /** Streams a stored export back (GetExportArtifact). */
  exportArtifact(actor: Principal, requestId: string, signal: AbortSignal): AsyncGenerator<ArtifactPart> {
    return this.stored.exportArtifact(actor, requestId, signal);
  }

  /** Deletes the chunks of every artifact past its expiry and marks it expired; returns how many. */
  expireArtifacts(): Promise<number> {
    return this.stored.expireArtifacts();
  }

  /** Anonymizes the subject in one transaction (ForgetUser). */
  forgetUser(actor: Principal, input: { userId: string; reason: string; idempotencyKey: string; requestedBy?: string }): Promise<ForgetResult> {
    return this.erasure.forgetUser(actor, input);
  }

  /** Carries out the scheduled erasures whose time has come; returns how many ran. */
  runScheduled(): Promise<number> {
    return this.erasure.runScheduled();
  }

  /** Cancels a scheduled request (CancelPrivacyRequest) and returns it as it now stands. */
  async cancelRequest(actor: Principal, input: { id: string; reason: string }): Promise<PrivacyRequestView> {
    await this.erasure.cancelRequest(actor, input);
    return this.ledger.getRequest(actor, input.id);
  }

  /** Extends an open request's due date once by one or two months (ExtendPrivacyRequest). */
  extendRequest(actor: Principal, input: { id: string; months: number; reason: string }): Promise<PrivacyRequestView> {
    return this.ledger.extendRequest(actor, input);
  }

  getRequest(actor: Principal, id: string): Promise<PrivacyRequestView> {
    return this.ledger.getRequest(actor, id);
  }

  listRequests(actor: Principal, input: Parameters<LedgerQueries['listRequests']>[1]): Promise<PrivacyRequestView[]> {
    return this.ledger.listRequests(actor, input);
  }

  /** Records downstream receipts, a batch at a time (the receipt consumer calls this); an outcome per receipt. */
  recordConfirmations(receipts: readonly NewConfirmation[]): Promise<ConfirmationOutcome[]> {
    return this.ledger.recordConfirmations(receipts);
  }

  /** Fails the requests left running by a replica that died (see ExportService.recoverInterrupted). */
  recoverInterrupted(opts: { staleMs: number; othersAreDead: boolean }): Promise<number> {
    return this.exports.recoverInterrupted(opts);
  }
}
