import type { Condition } from './privacy-request.js';

/**
 * Sets a condition as apimachinery's meta.SetStatusCondition does: a condition of the same type
 * is replaced, and `lastTransitionTime` moves only when `status` changes.
 */
export function setCondition(conditions: readonly Condition[] | undefined, next: Omit<Condition, 'lastTransitionTime'>, now: Date): Condition[] {
  const list = [...(conditions ?? [])];
  const i = list.findIndex((c) => c.type === next.type);
  const previous = i === -1 ? undefined : list[i];
  const lastTransitionTime = previous !== undefined && previous.status === next.status ? previous.lastTransitionTime : now.toISOString();
  const condition: Condition = { ...next, lastTransitionTime };
  if (i === -1) list.push(condition);
  else list[i] = condition;
  return list;
}
