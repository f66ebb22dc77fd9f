import type { Principal } from './principal.js';
import type { EngineOptions } from './engine-part.js';
import type { ConfirmationOutcome, NewConfirmation } from '../store/ledger.js';
import { Erasure, type ForgetResult } from './erasure.js';
import { type ExportEvent, ExportService } from './export-service.js';
import { LedgerQueries, type PrivacyRequestView } from './ledger-queries.js';
import { type ArtifactPart, type StoredExport, StoredExports } from './stored-exports.js';
import { type PendingValues, Rectification } from './rectification.js';
import { type ChoiceInput, type ChoicesResult, type ConsentRecord, ProcessingChoices } from './processing-choices.js';
import type { PurposeFlags } from '../events/cloudevents.js';

export { type ArtifactOptions, type ArtifactView, type EngineOptions, KEY_REUSED, REQUEST_NOT_FOUND, UUID } from './engine-part.js';
export { FORGET_MESSAGE, type ForgetResult } from './erasure.js';
export { type ExportEvent } from './export-service.js';
export { type PrivacyRequestView } from './ledger-queries.js';
export { type ArtifactPart, NO_ARTIFACT, type StoredExport } from './stored-exports.js';
export { type PendingValues } from './rectification.js';
export { type ConsentRecord, type ProcessingBasis } from './processing-choices.js';

/** A change request as it now stands in the ledger, and whether the call replayed an earlier one. */
export interface ChangeView {
  readonly request: PrivacyRequestView | undefined;
  readonly replayed: boolean;
}

/**
 * The privacy engine: export, stored exports, erasure and the ledger over one data map. Front
 * ends call only this; each capability is a part of its own (see engine-part.ts).
 */
export class PrivacyEngine {
  private readonly exports: ExportService;
  private readonly stored: StoredExports;
  private readonly erasure: Erasure;
  private readonly ledger: LedgerQueries;
  private readonly rectification: Rectification;
  private readonly choices: ProcessingChoices;

  constructor(opts: EngineOptions) {
    this.exports = new ExportService(opts);
    this.stored = new StoredExports(opts, this.exports);
    this.erasure = new Erasure(opts);
    this.ledger = new LedgerQueries(opts);
    this.rectification = new Rectification(opts);
    this.choices = new ProcessingChoices(opts);
  }

  /** Changes rectifiable fields and tells every downstream service (RectifyUser). */
  async rectifyUser(
    actor: Principal,
    input: { userId: string; changes: Readonly<Record<string, string>>; reason: string; idempotencyKey: string; requestedBy?: string },
  ): Promise<ChangeView> {
    const r = await this.rectification.rectifyUser(actor, input);
    return { request: await this.viewOf(actor, r.requestId), replayed: r.replayed };
  }

  /** A rectification's new values for a sidecar that must still apply them (the change-values responder). */
  pendingValues(requestId: string, service: string): Promise<PendingValues> {
    return this.rectification.pendingValues(requestId, service);
  }

  /** Restricts or objects to processing for some purposes (RestrictProcessing). */
  async restrictProcessing(actor: Principal, input: ChoiceInput): Promise<ChangeView & { purposes: readonly PurposeFlags[] }> {
    return this.withView(actor, await this.choices.restrict(actor, input));
  }

  /** Lifts a restriction or objection for some purposes (LiftRestriction). */
  async liftRestriction(actor: Principal, input: ChoiceInput): Promise<ChangeView & { purposes: readonly PurposeFlags[] }> {
    return this.withView(actor, await this.choices.lift(actor, input));
  }

  /** Records a consent (RecordConsent). */
  recordConsent(
    actor: Principal,
    input: { userId: string; purpose: string; textVersion: string; textSha256: string; source: string },
  ): Promise<{ consent: ConsentRecord; alreadyGiven: boolean; purposes: readonly PurposeFlags[] }> {
    return this.choices.recordConsent(actor, input);
  }

  /** Withdraws consents in one call (WithdrawConsent). */
  async withdrawConsent(
    actor: Principal,
    input: { userId: string; purposes: readonly string[]; source: string; reason: string },
  ): Promise<ChangeView & { withdrawn: ConsentRecord[]; purposes: readonly PurposeFlags[] }> {
    const r = await this.choices.withdrawConsent(actor, input);
    return { ...(await this.withView(actor, r)), withdrawn: r.withdrawn };
  }

  /** The subject's consent records and current choices (ListConsents). */
  listConsents(actor: Principal, input: { userId: string }): Promise<{ consents: ConsentRecord[]; purposes: PurposeFlags[] }> {
    return this.choices.listConsents(actor, input);
  }

  private async withView(actor: Principal, r: ChoicesResult): Promise<ChangeView & { purposes: readonly PurposeFlags[] }> {
    return { request: await this.viewOf(actor, r.requestId), replayed: r.replayed, purposes: r.purposes };
  }

  private async viewOf(actor: Principal, requestId: string | undefined): Promise<PrivacyRequestView | undefined> {
    return requestId === undefined ? undefined : this.ledger.getRequest(actor, requestId);
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

  /** A forget's ledger entry for its caller: as the forget wrote it when it has it, else read back (a replay, a scheduling). */
  async forgetRequest(actor: Principal, r: ForgetResult): Promise<PrivacyRequestView> {
    return r.written === undefined ? this.ledger.getRequest(actor, r.requestId) : this.ledger.writtenView(r.written);
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
