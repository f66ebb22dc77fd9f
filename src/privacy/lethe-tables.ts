import type { Knex } from 'knex';
import { type DataMap, mergeDataMaps, parseDataMap, subjectLinks } from './data-map.js';
import { type ForgetPlan, compileForget } from './forget.js';
import { groupSteps, readTableFacts } from './forget-groups.js';
import { checkDataMapAgainstDatabase } from './schema-check.js';
import type { ColumnTypes } from './sql.js';

/**
 * Lethe's own tables as a data map, so that a forget erases what Lethe itself wrote with the
 * same engine and the same checks as the platform's tables. Stored exports are crypto-shredded:
 * their data keys and encrypted chunks go, their description stays marked `erased`. The ledger,
 * the erasure records and downstream confirmations hold ids, dates and outcomes: the proof.
 * The outbox holds the subject id only and is deleted after LETHE_OUTBOX_RETENTION.
 */
const LETHE_TABLES_YAML = `
categories:
  - name: lethe_export_artifact_keys
    table: lethe_export_artifact_keys
    subject: {via: {table: lethe_privacy_requests, column: request_id, references: id, subject_column: subject_id}}
    forget: delete
  - name: lethe_export_artifact_chunks
    table: lethe_export_artifact_chunks
    subject: {via: {table: lethe_privacy_requests, column: request_id, references: id, subject_column: subject_id}}
    forget: delete
  - name: lethe_export_artifacts
    table: lethe_export_artifacts
    subject: {via: {table: lethe_privacy_requests, column: request_id, references: id, subject_column: subject_id}}
    forget:
      columns:
        state: {set: erased}
        key_id: {keep: "names the LETHE_ARTIFACT_KEY that wrapped the destroyed data key"}
        key_scheme: {keep: "how the destroyed chunks were sealed"}
        sha256: {keep: "the digest of the delivered document: proof of what was disclosed, reveals nothing without it"}
        counts: {keep: "records per category: numbers, no values"}
  - name: lethe_privacy_requests
    table: lethe_privacy_requests
    subject: {column: subject_id}
    forget: {keep: "the ledger is the proof that each request was answered: ids, requesters, reasons, dates, outcomes"}
  - name: lethe_erasures
    table: lethe_erasures
    subject: {column: subject_id}
    forget: {keep: "records that the subject was erased, so a second forget changes nothing"}
  - name: lethe_rectifications
    table: lethe_rectifications
    subject: {column: subject_id}
    forget:
      columns:
        pending_values: "null"
        fields: {keep: "the names of the fields rectified (email, name): proof of the request, no values"}
  - name: lethe_change_versions
    table: lethe_change_versions
    subject: {column: subject_id}
    forget: {keep: "a counter that orders the subject's changes: no personal data"}
  - name: processing_restrictions
    table: lethe_processing_limits
    subject: {column: subject_id}
    export:
      omit_when_empty: true
      fields:
        - {name: purpose, column: purpose}
        - {name: basis, column: basis}
        - {name: since, column: since}
        - {name: requested_by, column: requested_by}
        - {name: lifted_at, column: lifted_at}
        - {name: lifted_by, column: lifted_by}
      order_by: [{column: since}, {column: purpose}, {column: basis}]
    forget: delete
  # Consent records are the proof a regulator asks for (Art. 7(1)): a forget keeps them (they hold
  # the subject id, which the ledger and the anonymized users row keep too, and no personal value)
  # and withdraws every consent in force, with withdrawn_source 'erasure' (see erasure.ts).
  - name: consents
    table: lethe_consents
    subject: {column: subject_id}
    export:
      omit_when_empty: true
      fields:
        - {name: purpose, column: purpose}
        - {name: text_version, column: text_version}
        - {name: text_sha256, column: text_sha256}
        - {name: source, column: source}
        - {name: given_at, column: given_at}
        - {name: withdrawn_at, column: withdrawn_at}
        - {name: withdrawn_source, column: withdrawn_source}
      order_by: [{column: given_at}, {column: purpose}, {column: id}]
    forget:
      columns:
        purpose: {keep: "the purpose consented to: proof of consent"}
        text_version: {keep: "the version of the text agreed to: proof of consent"}
        text_sha256: {keep: "the digest of the text agreed to: proof of consent"}
        source: {keep: "where consent was given (a checked token such as web-signup, never free text)"}
        given_by: {keep: "the principal who recorded it: the subject id or a service name"}
        withdrawn_by: {keep: "the principal who withdrew it"}
        withdrawn_source: {keep: "where it was withdrawn (a checked token)"}
`;

const LETHE_TABLES_SOURCE = "Lethe's own tables (src/privacy/lethe-tables.ts)";

const letheTablesDataMap = (): DataMap => parseDataMap(LETHE_TABLES_YAML, LETHE_TABLES_SOURCE);

export interface PreparedDataMap {
  /** The platform map with Lethe's own exported categories (restrictions, consents) after its own. */
  readonly dataMap: DataMap;
  /** The column types of both, for the export queries. */
  readonly columnTypes: ColumnTypes;
  /** The platform map's forget, then Lethe's own tables, in one plan run in one transaction. */
  readonly forgetPlan: ForgetPlan;
}

/**
 * Checks the server's data map and Lethe's own tables against the database once at start-up and
 * compiles the forget that covers both.
 */
export async function prepareServerDataMap(knex: Knex, map: DataMap, source: string, hashKey: Buffer | undefined): Promise<PreparedDataMap> {
  const columnTypes = await checkDataMapAgainstDatabase(knex, map, source);
  const platform = compileForget(map, columnTypes, hashKey, source);
  const ownMap = letheTablesDataMap();
  const ownTypes = await checkDataMapAgainstDatabase(knex, ownMap, LETHE_TABLES_SOURCE);
  const own = compileForget(ownMap, ownTypes, undefined, LETHE_TABLES_SOURCE);
  const exported = { ...ownMap, categories: ownMap.categories.filter((c) => c.export !== undefined) };
  const steps = [...platform.steps, ...own.steps.map((s) => ({ ...s, reportWhenZero: false }))];
  // What a forget writes besides: the erasure record, the consents it withdraws, the audit entry, the outbox event, the ledger entry.
  const trailing = ['lethe_erasures', 'lethe_consents', 'lethe_outbox', 'lethe_privacy_requests', ...(map.audit === undefined ? [] : [map.audit.table])];
  const facts = await readTableFacts(knex, [...steps.flatMap((s) => [s.category.table, ...subjectLinks(s.category).map((l) => l.table)]), ...trailing]);
  return {
    dataMap: mergeDataMaps(map, exported, `${source} with ${LETHE_TABLES_SOURCE}`),
    columnTypes: new Map([...ownTypes, ...columnTypes]),
    forgetPlan: { steps, order: [...platform.order, ...own.order], ...groupSteps(steps, facts, trailing) },
  };
}
