import { pino } from 'pino';
import { DEFAULT_DATA_MAP_PATH, type DataMap, loadDataMap } from '../../src/privacy/data-map.js';
import { type ArtifactOptions, type ExportEvent, PrivacyEngine } from '../../src/privacy/engine.js';
import { ExportDocumentAssembler } from '../../src/privacy/export-document.js';
import { prepareServerDataMap } from '../../src/privacy/lethe-tables.js';
import type { Database } from '../../src/store/database.js';
import { loadDemoData } from '../../src/store/demo-data.js';
import { migrateIdentitySchema, migrateLethe } from '../../src/store/migrations.js';

export const silentLogger = pino({ level: 'silent' });

/** A signal that never aborts, for calls that take one. */
export const never = new AbortController().signal;

/** Migrates, loads the demo data and builds an engine over the default data map. */
export async function demoEngine(db: Database, options: EngineFixtureOptions = {}): Promise<PrivacyEngine> {
  await migrateLethe(db.knex);
  await migrateIdentitySchema(db.knex);
  await loadDemoData(db.knex);
  return engineOn(db, options);
}

interface EngineFixtureOptions {
  dataMap?: DataMap;
  hashKey?: Buffer;
  artifacts?: ArtifactOptions;
  now?: () => Date;
  expectedServices?: readonly string[];
  exportStallTimeoutMs?: number;
}

/** Another engine over a database demoEngine prepared. */
export async function engineOn(db: Database, options: EngineFixtureOptions = {}): Promise<PrivacyEngine> {
  const dataMap = options.dataMap ?? (await loadDataMap(DEFAULT_DATA_MAP_PATH));
  const prepared = await prepareServerDataMap(db.knex, dataMap, 'test', options.hashKey);
  return new PrivacyEngine({
    knex: db.knex,
    ...prepared,
    logger: silentLogger,
    artifacts: options.artifacts,
    now: options.now,
    expectedServices: options.expectedServices,
    exportStallTimeoutMs: options.exportStallTimeoutMs,
  });
}

/** Runs an export to the end and returns the document text, the parsed document and the trailer. */
export async function collectExport(events: AsyncIterable<ExportEvent>): Promise<{ text: string; doc: Record<string, unknown>; events: ExportEvent[] }> {
  let assembler: ExportDocumentAssembler | undefined;
  const chunks: string[] = [];
  const seen: ExportEvent[] = [];
  for await (const e of events) {
    seen.push(e);
    if (e.kind === 'header') assembler = new ExportDocumentAssembler(e.categories, (c) => chunks.push(c.toString()), e.services);
    else assembler?.apply(e);
  }
  const text = chunks.join('');
  return { text, doc: JSON.parse(text) as Record<string, unknown>, events: seen };
}
