/** The NATS subjects and names of Lethe's event contract (README, "Events"). */

export const STREAM_SUBJECTS = 'privacy.v1.>';
export const ANONYMIZED_SUBJECT = 'privacy.v1.user.anonymized';
export const RECEIPTS_FILTER = 'privacy.v1.user.purged.>';
export const receiptSubject = (service: string): string => `privacy.v1.user.purged.${service}`;

/** A downstream service's name: a DNS label, since it is a subject token and a consumer name. */
export const SERVICE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
export const SERVICE_NAME_RULE = 'lowercase letters, digits and -, starting and ending with a letter or digit (at most 63)';

/**
 * Changes other than erasure (rectifications, processing choices) and their receipts. A subject
 * space of their own: a 2.9 server's consumer takes one filter, so a sidecar's changes consumer
 * reads `privacy.v1.change.*` (never the receipts, one token deeper).
 */
export const RECTIFIED_SUBJECT = 'privacy.v1.change.rectified';
export const PROCESSING_SUBJECT = 'privacy.v1.change.processing';
export const CHANGES_FILTER = 'privacy.v1.change.*';
export const APPLIED_FILTER = 'privacy.v1.change.applied.>';
export const appliedSubject = (service: string): string => `privacy.v1.change.applied.${service}`;

export const ANONYMIZED_TYPE = 'dev.lethe.privacy.user.anonymized.v1';
export const PURGED_TYPE = 'dev.lethe.privacy.user.purged.v1';
export const RECTIFIED_TYPE = 'dev.lethe.privacy.user.rectified.v1';
export const PROCESSING_TYPE = 'dev.lethe.privacy.user.processing.v1';
export const APPLIED_TYPE = 'dev.lethe.privacy.change.applied.v1';

/**
 * Export requests to a service's sidecars (core NATS request-reply, never stored). Outside the
 * stream's `privacy.v1.>`: a stream would store them, and answer the request with its PubAck.
 */
export const exportRequestSubject = (service: string): string => `lethe.export.v1.${service}`;
export const exportQueueGroup = (service: string): string => `lethe-export-${service}`;
