import { describe, expect, it } from 'vitest';
import { parseDataMap } from '../../src/privacy/data-map.js';
import { forgetOrder } from '../../src/privacy/forget.js';
import { type TableFacts, groupSteps } from '../../src/privacy/forget-groups.js';

/** Steps of a map in forget order: deletes as written, everything else an update. */
const stepsOf = (categories: string) =>
  forgetOrder(parseDataMap(`categories:\n${categories}`, 'test.yaml')).map((category) => ({
    category,
    action: category.forget === 'delete' ? ('delete' as const) : ('update' as const),
  }));

const plain: TableFacts = { referenced: new Set(), descendants: new Set(), isolated: false };
const facts = (entries: Record<string, Partial<TableFacts>>, tables: string[]) => new Map(tables.map((t) => [t, { ...plain, ...entries[t] }]));

describe('groupSteps', () => {
  const twoTables = `  - {name: a, table: a, subject: {column: user_id}, forget: {columns: {note: "null"}}}
  - {name: b, table: b, subject: {column: user_id}, forget: delete}`;

  it('puts steps on different tables into one statement, with the trailing inserts', () => {
    const g = groupSteps(stepsOf(twoTables), facts({}, ['a', 'b', 'ledger']), ['ledger']);
    expect(g.groups).toEqual([[0, 1]]);
    expect([...g.trailingInserts]).toEqual(['ledger']);
  });

  it('never changes one table twice in a statement', () => {
    const steps = stepsOf(`  - {name: a1, table: a, subject: {column: user_id}, forget: {columns: {note: "null"}}}
  - {name: a2, table: a, subject: {column: owner_id}, forget: {columns: {note: "null"}}}`);
    expect(groupSteps(steps, facts({}, ['a']), []).groups).toEqual([[0], [1]]);
  });

  it('runs a step after a delete of a table it references by foreign key in a statement of its own', () => {
    const steps = stepsOf(`  - {name: b, table: b, subject: {column: user_id}, forget: delete}
  - {name: a, table: a, subject: {column: user_id}, forget: {columns: {note: "null"}}}
  - {name: c, table: c, subject: {column: user_id}, forget: delete}`);
    const f = facts({ b: { referenced: new Set(['id']), descendants: new Set(['a']) } }, ['a', 'b', 'c']);
    expect(groupSteps(steps, f, []).groups).toEqual([[0], [1, 2]]);
  });

  it('keeps an update together with what references the table when no referenced column changes', () => {
    const f = facts({ a: { referenced: new Set(['id']), descendants: new Set(['b']) } }, ['a', 'b']);
    expect(groupSteps(stepsOf(twoTables), f, []).groups).toEqual([[0, 1]]);
    const changesKey = facts({ a: { referenced: new Set(['note']), descendants: new Set(['b']) } }, ['a', 'b']);
    expect(groupSteps(stepsOf(twoTables), changesKey, []).groups).toEqual([[0], [1]]);
  });

  it('splits before a step that reaches its subject through a table a foreign-key action may change', () => {
    const steps = stepsOf(`  - {name: orders, table: orders, subject: {column: user_id}, forget: delete}
  - {name: lines, table: lines, subject: {via: {table: carts, column: cart_id, references: id, subject_column: user_id}}, forget: delete}`);
    const f = facts({ orders: { referenced: new Set(['id']), descendants: new Set(['carts']) } }, ['orders', 'lines', 'carts']);
    expect(groupSteps(steps, f, []).groups).toEqual([[0], [1]]);
  });

  it('runs a table with triggers, or one missing from the facts, alone, and then writes apart', () => {
    const g = groupSteps(stepsOf(twoTables), facts({ b: { isolated: true } }, ['a', 'b', 'ledger']), ['ledger']);
    expect(g.groups).toEqual([[0], [1]]);
    expect(g.trailingInserts.size).toBe(0);
    expect(groupSteps(stepsOf(twoTables), facts({}, ['b']), []).groups).toEqual([[0], [1]]);
  });

  it('keeps trailing inserts apart from tables the last statement can change by foreign key', () => {
    const f = facts({ b: { referenced: new Set(['id']), descendants: new Set(['audit']) } }, ['a', 'b', 'audit', 'ledger']);
    expect([...groupSteps(stepsOf(twoTables), f, ['audit', 'ledger']).trailingInserts]).toEqual(['ledger']);
  });
});
