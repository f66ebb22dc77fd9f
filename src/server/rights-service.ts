import type { CallContext } from 'nice-grpc';
import { toMessage } from '../api/request-messages.js';
import type { PurposeFlags } from '../events/cloudevents.js';
import {
  type Consent,
  ConsentState,
  type DeepPartial,
  type LiftRestrictionRequest,
  ProcessingBasis,
  type PrivacyServiceImplementation,
  type PurposeState,
  type RestrictProcessingRequest,
} from '../gen/lethe/privacy/v1/privacy.js';
import type { ChangeView, ConsentRecord, PrivacyEngine, ProcessingBasis as Basis } from '../privacy/engine.js';
import type { AuthContext } from './middleware.js';

type RightsHandlers = Pick<
  PrivacyServiceImplementation<AuthContext>,
  'rectifyUser' | 'restrictProcessing' | 'liftRestriction' | 'recordConsent' | 'withdrawConsent' | 'listConsents'
>;

/** The gRPC handlers of rectification, restriction, objection and consent: messages to engine calls and back. */
export function rightsHandlers(engine: PrivacyEngine): RightsHandlers {
  return {
    async rectifyUser(request, context: CallContext & AuthContext) {
      const r = await engine.rectifyUser(context.principal, {
        userId: request.userId,
        changes: request.changes,
        reason: request.reason,
        idempotencyKey: request.idempotencyKey,
        requestedBy: request.requestedBy,
      });
      return changeMessage(r);
    },

    async restrictProcessing(request, context: CallContext & AuthContext) {
      return choiceMessage(await engine.restrictProcessing(context.principal, choiceInput(request)));
    },

    async liftRestriction(request, context: CallContext & AuthContext) {
      return choiceMessage(await engine.liftRestriction(context.principal, choiceInput(request)));
    },

    async recordConsent(request, context: CallContext & AuthContext) {
      const r = await engine.recordConsent(context.principal, {
        userId: request.userId,
        purpose: request.purpose,
        textVersion: request.textVersion,
        textSha256: request.textSha256,
        source: request.source,
      });
      return { consent: toConsent(r.consent), alreadyGiven: r.alreadyGiven, purposes: r.purposes.map(toPurposeState) };
    },

    async withdrawConsent(request, context: CallContext & AuthContext) {
      const r = await engine.withdrawConsent(context.principal, {
        userId: request.userId,
        purposes: request.purposes,
        source: request.source,
        reason: request.reason,
      });
      return {
        request: r.request === undefined ? undefined : toMessage(r.request),
        withdrawn: r.withdrawn.map(toConsent),
        purposes: r.purposes.map(toPurposeState),
      };
    },

    async listConsents(request, context: CallContext & AuthContext) {
      const r = await engine.listConsents(context.principal, { userId: request.userId });
      return { consents: r.consents.map(toConsent), purposes: r.purposes.map(toPurposeState) };
    },
  };
}

function choiceInput(request: RestrictProcessingRequest | LiftRestrictionRequest) {
  return {
    userId: request.userId,
    purposes: request.purposes,
    basis: basisOf(request.basis),
    reason: request.reason,
    idempotencyKey: request.idempotencyKey,
    requestedBy: request.requestedBy,
  };
}

function choiceMessage(r: ChangeView & { purposes: readonly PurposeFlags[] }) {
  return { ...changeMessage(r), purposes: r.purposes.map(toPurposeState) };
}

function changeMessage(r: ChangeView): { request: ReturnType<typeof toMessage> | undefined; replayed: boolean } {
  return { request: r.request === undefined ? undefined : toMessage(r.request), replayed: r.replayed };
}

const basisOf = (b: ProcessingBasis): Basis => (b === ProcessingBasis.PROCESSING_BASIS_OBJECTION ? 'objection' : 'restriction');

const CONSENT_STATES = {
  given: ConsentState.CONSENT_STATE_GIVEN,
  withdrawn: ConsentState.CONSENT_STATE_WITHDRAWN,
  none: ConsentState.CONSENT_STATE_NONE,
} as const;

function toPurposeState(p: PurposeFlags): DeepPartial<PurposeState> {
  return { purpose: p.purpose, restricted: p.restricted, objected: p.objected, consent: CONSENT_STATES[p.consent] };
}

function toConsent(c: ConsentRecord): DeepPartial<Consent> {
  return {
    id: c.id,
    userId: c.userId,
    purpose: c.purpose,
    textVersion: c.textVersion,
    textSha256: c.textSha256 ?? '',
    source: c.source,
    givenAt: c.givenAt,
    givenBy: c.givenBy,
    withdrawnAt: c.withdrawnAt ?? undefined,
    withdrawnBy: c.withdrawnBy ?? '',
    withdrawnSource: c.withdrawnSource ?? '',
  };
}
