import type { Knex } from 'knex';
import type { ActorFacts, Membership, SubjectFacts } from './authorization.js';
import type { DataMap } from './data-map.js';
import { qualified, quoteIdent } from './sql.js';

type Authorization = NonNullable<DataMap['authorization']>;

/** Reads what the authorization rules need, as the data map's `authorization` section says. */
export class FactsReader {
  constructor(private readonly map: DataMap) {}

  /** True when the data map names no subject table (a downstream schema): existence is not checked. */
  async subjectExists(db: Knex | Knex.Transaction, subjectId: string): Promise<boolean> {
    const s = this.map.subject;
    if (s === undefined) return true;
    const row: unknown = await db.first(db.raw('1 AS "one"')).from(s.table).where(s.column, subjectId);
    return row !== undefined;
  }

  async subject(db: Knex | Knex.Transaction, subjectId: string): Promise<SubjectFacts> {
    const a = this.map.authorization;
    if (a === undefined) return { isPlatformOwner: false, memberships: [] };
    const [isPlatformOwner, memberships] = [await this.platformOwner(db, a, subjectId), await this.memberships(db, a, subjectId)];
    return { isPlatformOwner, memberships };
  }

  async actor(db: Knex | Knex.Transaction, actorId: string): Promise<ActorFacts> {
    const a = this.map.authorization;
    if (a === undefined) return { isPlatformOwner: false, ownerOf: new Set() };
    const isPlatformOwner = await this.platformOwner(db, a, actorId);
    const owned = (await this.memberships(db, a, actorId)).filter((m) => a.memberships.owner_roles.includes(m.role));
    return { isPlatformOwner, ownerOf: new Set(owned.map((m) => m.organizationId)) };
  }

  private async platformOwner(db: Knex | Knex.Transaction, a: Authorization, id: string): Promise<boolean> {
    const p = a.platform_owner;
    const row = (await db.first({ flag: p.flag_column }).from(p.table).where(p.subject_column, id)) as { flag: unknown } | undefined;
    return row?.flag === true;
  }

  private async memberships(db: Knex | Knex.Transaction, a: Authorization, id: string): Promise<Membership[]> {
    const m = a.memberships;
    const l = m.organization_label;
    const rows = (await db.raw(
      `SELECT ${qualified('m', m.organization_column)}::text AS "org", ${qualified('m', m.role_column)}::text AS "role", ${qualified('o', l.column)}::text AS "label"` +
        ` FROM ${quoteIdent(m.table)} AS "m" LEFT JOIN ${quoteIdent(l.table)} AS "o" ON ${qualified('o', l.references)} = ${qualified('m', m.organization_column)}` +
        ` WHERE ${qualified('m', m.subject_column)} = ?`,
      [id],
    )) as { rows: Array<{ org: string; role: string; label: string | null }> };
    return rows.rows.map((r) => ({ organizationId: r.org, role: r.role, label: r.label ?? r.org }));
  }
}
