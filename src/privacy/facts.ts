import type { Knex } from 'knex';
import type { ActorFacts, Membership, SubjectFacts } from './authorization.js';
import type { DataMap } from './data-map.js';
import { qualified, quoteIdent } from './sql.js';

type Authorization = NonNullable<DataMap['authorization']>;

/** A scalar SQL expression with `?` for its values, read beside the facts (see forDecision). */
export interface Column {
  readonly sql: string;
  readonly bindings: readonly Knex.RawBinding[];
}

export interface ForgetFacts {
  readonly subject: SubjectFacts;
  readonly actor: ActorFacts;
  readonly subjectExists: boolean;
  /** The values of the `extra` columns, in order. */
  readonly extra: readonly unknown[];
}

/** Reads what the authorization rules need, as the data map's `authorization` section says. */
export class FactsReader {
  /** The facts as scalar subqueries, each with one `?` for the person's id (undefined: nothing to read). */
  private readonly sql: { readonly owner?: string; readonly memberships?: string; readonly exists?: string };

  constructor(private readonly map: DataMap) {
    const a = map.authorization;
    const s = map.subject;
    const exists = s === undefined ? undefined : `EXISTS (SELECT 1 FROM ${quoteIdent(s.table)} WHERE ${quoteIdent(s.column)} = ?)`;
    if (a === undefined) {
      this.sql = { exists };
      return;
    }
    const p = a.platform_owner;
    const m = a.memberships;
    const l = m.organization_label;
    this.sql = {
      owner: `(SELECT ${quoteIdent(p.flag_column)} FROM ${quoteIdent(p.table)} WHERE ${quoteIdent(p.subject_column)} = ? LIMIT 1)`,
      memberships:
        `(SELECT coalesce(json_agg(json_build_object('org', ${qualified('m', m.organization_column)}::text, 'role', ${qualified('m', m.role_column)}::text, 'label', ${qualified('o', l.column)}::text)), '[]'::json)` +
        ` FROM ${quoteIdent(m.table)} AS "m" LEFT JOIN ${quoteIdent(l.table)} AS "o" ON ${qualified('o', l.references)} = ${qualified('m', m.organization_column)}` +
        ` WHERE ${qualified('m', m.subject_column)} = ?)`,
      exists,
    };
  }

  /**
   * Everything a forget or an export decides on, as one statement: the subject's facts,
   * the actor's (none without `actorId`: the rules do not look at them), whether the subject
   * exists (read as the methods below read them), and the caller's `extra` columns. `parse`
   * reads its row.
   */
  forDecision(
    subjectId: string,
    actorId: string | undefined,
    extra: readonly Column[],
  ): { statement: Column; parse: (rows: readonly Record<string, unknown>[]) => ForgetFacts } {
    const q = this.sql;
    const columns: Array<Column & { name: string }> = extra.map((c, i) => ({ ...c, name: `x${i}` }));
    const add = (name: string, sql: string | undefined, id: string | undefined) => {
      if (sql !== undefined && id !== undefined) columns.push({ name, sql, bindings: [id] });
    };
    add('subject_owner', q.owner, subjectId);
    add('subject_memberships', q.memberships, subjectId);
    add('subject_exists', q.exists, subjectId);
    add('actor_owner', q.owner, actorId);
    add('actor_memberships', q.memberships, actorId);
    const statement = {
      sql: columns.length === 0 ? 'SELECT 1 AS "one"' : `SELECT ${columns.map((c) => `${c.sql} AS "${c.name}"`).join(', ')}`,
      bindings: columns.flatMap((c) => c.bindings),
    };
    const ownerRoles = this.map.authorization?.memberships.owner_roles ?? [];
    const parse = (rows: readonly Record<string, unknown>[]): ForgetFacts => {
      const r = rows[0] ?? {};
      const actorMemberships = memberships(r.actor_memberships);
      return {
        subject: { isPlatformOwner: r.subject_owner === true, memberships: memberships(r.subject_memberships) },
        actor: {
          isPlatformOwner: r.actor_owner === true,
          ownerOf: new Set(actorMemberships.filter((m) => ownerRoles.includes(m.role)).map((m) => m.organizationId)),
        },
        subjectExists: q.exists === undefined || r.subject_exists === true,
        extra: extra.map((_, i) => r[`x${i}`]),
      };
    };
    return { statement, parse };
  }

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

/** Memberships as forDecision reads them (json: parsed by the driver, or text). */
function memberships(v: unknown): Membership[] {
  const list = (typeof v === 'string' ? JSON.parse(v) : (v ?? [])) as Array<{ org: string; role: string; label: string | null }>;
  return list.map((x) => ({ organizationId: x.org, role: x.role, label: x.label ?? x.org }));
}
