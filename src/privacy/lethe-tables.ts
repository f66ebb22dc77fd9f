import type { Knex } from 'knex';
import { type DataMap, parseDataMap, subjectLinks } from './data-map.js';
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
`;

const LETHE_TABLES_SOURCE = "Lethe's own tables (src/privacy/lethe-tables.ts)";

const letheTablesDataMap = (): DataMap => parseDataMap(LETHE_TABLES_YAML, LETHE_TABLES_SOURCE);

export interface PreparedDataMap {
  /** The platform map's column types, for the export queries. */
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
  const own = compileForget(ownMap, await checkDataMapAgainstDatabase(knex, ownMap, LETHE_TABLES_SOURCE), undefined, LETHE_TABLES_SOURCE);
  const steps = [...platform.steps, ...own.steps.map((s) => ({ ...s, reportWhenZero: false }))];
  // What a forget writes besides: the erasure record, the audit entry, the outbox event, the ledger entry.
  const trailing = ['lethe_erasures', 'lethe_outbox', 'lethe_privacy_requests', ...(map.audit === undefined ? [] : [map.audit.table])];
  const facts = await readTableFacts(knex, [...steps.flatMap((s) => [s.category.table, ...subjectLinks(s.category).map((l) => l.table)]), ...trailing]);
  return {
    columnTypes,
    forgetPlan: { steps, order: [...platform.order, ...own.order], ...groupSteps(steps, facts, trailing) },
  };
}
